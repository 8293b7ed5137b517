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


def _fresh_stream(rank: int) -> dict[str, Any]:
    """Generator states for the training steps of a run that starts now, drawn from (so following)
    the seeded global generators, one stream per rank."""
    seed = int(torch.randint(0, 2**31 - 1, ())) + rank
    outside = generator_states()
    torch.manual_seed(seed), np.random.seed(seed % 2**32), random.seed(seed)
    stream = generator_states()
    set_generator_states(outside)
    return stream


class RNGStateCheckpoint(L.Callback):
    """Give the training steps their own random number stream, save it (per rank) in checkpoints and
    restore it on resume, so that dropout and any other random layer replay an uninterrupted run.

    Lightning restores weights, optimiser, schedulers, loop counters and (stateful loaders) the
    training loader's position but not the global RNGs; and even restored ones would not replay,
    because a resumed run builds its loader iterators (each draws a seed from the global generator)
    at other moments than the run it resumes. So the steps do not use the global stream: from
    `on_train_batch_start` to `on_train_batch_end` (forward, backward, optimiser step) the
    generators hold the steps' own states, swapped back out afterwards; loaders, validation and
    everything else keep the global stream. A checkpoint stores both; a resume restores the global
    stream at once (as close as data loading can get) and the steps' stream exactly.

    Under DDP each rank draws its own numbers, so the checkpoint holds one state per rank (gathered
    into the file rank 0 writes) and each rank restores its own. Resuming on another world size
    restores rank r from saved rank r mod N and warns: the run goes on, but no longer replays exactly.
    """

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1
        self._steps: dict[str, Any] | None = None
        """The training steps' generator states between steps (None until training starts)."""
        self._outside: dict[str, Any] | None = None
        """The global states while a step runs (None outside a step)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before the checkpoint is restored, so load_state_dict knows which saved state is this rank's.
        self._rank, self._world_size = trainer.global_rank, trainer.world_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._steps is None:  # a fresh run (a resume restored them)
            self._steps = _fresh_stream(self._rank)

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        if self._steps is not None and self._outside is None:
            self._outside = generator_states()
            set_generator_states(self._steps)

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if self._outside is not None:
            self._steps = generator_states()
            set_generator_states(self._outside)
            self._outside = None

    def state_dict(self) -> dict[str, Any]:
        inside = self._outside is not None
        mine = {"global": self._outside if inside else generator_states(),
                "steps": generator_states() if inside else self._steps}
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
        mine = ranks[self._rank % len(ranks)]
        if "global" not in mine:  # checkpoints before the steps' own stream: one state for both
            mine = {"global": mine, "steps": mine}
        set_generator_states(mine["global"])
        self._steps = mine["steps"]
