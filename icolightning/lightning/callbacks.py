"""Callbacks that the default config tree adds to every run."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGStateCheckpoint(L.Callback):
    """Save the random number generator states in checkpoints and restore them on resume.

    Lightning restores weights, optimiser, schedulers and loop counters but not the global
    RNGs, so after a resume the shuffling order (RandomSampler draws from torch's generator
    when an epoch's iterator is created) and dropout masks would differ from an uninterrupted
    run. With this callback a run resumed from a checkpoint written at an epoch boundary
    replays exactly. States are stored as tensors and plain lists, so checkpoints still load
    with ``weights_only=True``. Under DDP the checkpoint holds rank 0's states (samplers there
    are seeded per epoch and do not depend on them).
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
