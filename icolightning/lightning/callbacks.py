"""Callbacks that the default config tree adds to every run."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn


def generator_states() -> dict[str, Any]:
    """This process's torch, NumPy, Python and (current device's) CUDA generator states as tensors and
    plain lists, so that checkpoints still load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_generator_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGStateCheckpoint(L.Callback):
    """Save every rank's random number generator states in checkpoints and restore them on resume.

    Lightning restores weights, optimiser, schedulers, loop counters and (stateful loaders) the
    training loader's position but not the global RNGs, so after a resume dropout masks, random
    augmentations and the next epoch's shuffle would differ from an uninterrupted run. Under DDP
    each rank draws its own numbers, so the checkpoint holds one state per rank (gathered into the
    file rank 0 writes) and each rank restores its own. Resuming on another world size restores
    rank r from saved rank r mod N and warns: the run goes on, but no longer replays exactly.
    """

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before the checkpoint is restored, so load_state_dict knows which saved state is this rank's.
        self._rank, self._world_size = trainer.global_rank, trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        mine = generator_states()
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks: list[Any] = [None] * self._world_size
            dist.all_gather_object(ranks, mine)  # state_dict runs on every rank when a checkpoint is saved
            return {"ranks": ranks}
        return {"ranks": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks", [state_dict])  # checkpoints before per-rank states: one flat state
        if len(ranks) != self._world_size:
            rank_zero_warn(
                f"checkpoint holds generator states of {len(ranks)} rank(s), this run has {self._world_size}: "
                f"rank r resumes with saved rank r mod {len(ranks)}'s states, so the run no longer replays "
                "an uninterrupted one bit for bit"
            )
        set_generator_states(ranks[self._rank % len(ranks)])
