"""RNGStateCheckpoint keeps one generator state per rank and restores each rank's own; on another
world size it restores rank r from saved rank r mod N and warns that bit-exactness is lost."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from icolightning.lightning.callbacks import RNGStateCheckpoint


def _draw() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def _callback(rank: int, world_size: int) -> RNGStateCheckpoint:
    callback = RNGStateCheckpoint()
    callback.setup(SimpleNamespace(global_rank=rank, world_size=world_size), None, "fit")
    return callback


def _saved_by_two_ranks() -> tuple[dict, list[tuple]]:
    """What a 2-rank run's checkpoint holds (each rank's state, as all_gather_object collects it),
    and the numbers each rank draws next."""
    ranks, next_draws = [], []
    for seed in (11, 22):
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        ranks.append(_callback(0, 1).state_dict()["ranks"][0])
        next_draws.append(_draw())
    return {"ranks": ranks}, next_draws


def test_each_rank_restores_its_own_generators(recwarn):
    saved, next_draws = _saved_by_two_ranks()
    for rank in (0, 1):
        torch.manual_seed(999)
        _callback(rank, 2).load_state_dict(saved)
        assert _draw() == next_draws[rank]
    assert not [w for w in recwarn if "generator states" in str(w.message)]


def test_another_world_size_resumes_with_a_warning():
    saved, next_draws = _saved_by_two_ranks()
    for rank, world_size in ((0, 1), (2, 3)):
        with pytest.warns(UserWarning, match="no longer replays"):
            _callback(rank, world_size).load_state_dict(saved)
        assert _draw() == next_draws[rank % 2]


def test_checkpoints_with_one_flat_state_still_load():
    saved, next_draws = _saved_by_two_ranks()
    _callback(0, 1).load_state_dict(saved["ranks"][1])
    assert _draw() == next_draws[1]
