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


def _step(callback: RNGStateCheckpoint) -> tuple[float, float, float]:
    """What a training step draws (dropout, say), between the callback's batch hooks."""
    callback.on_train_batch_start(None)
    drawn = _draw()
    callback.on_train_batch_end(None)
    return drawn


def test_steps_draw_from_their_own_stream_whatever_happens_between_them():
    """Loader iterators draw from the global generator between steps, at other moments in a resumed
    run: the numbers the steps see do not move, and a checkpoint between steps replays them."""
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    quiet = _callback(0, 1)
    quiet.on_train_start(None, None)
    first, second = _step(quiet), _step(quiet)

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    busy = _callback(0, 1)
    busy.on_train_start(None, None)
    assert _step(busy) == first
    saved = busy.state_dict()
    _draw()  # a loader iterator created between the steps
    assert _step(busy) == second

    resumed = _callback(0, 1)
    resumed.load_state_dict(saved)
    _draw(), _draw()  # the resumed run builds its iterators anew
    resumed.on_train_start(None, None)
    assert _step(resumed) == second
