"""Reading a checkpoint file once and rebuilding the task it stores from its checked arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from icolightning.errors import CheckpointError
from icolightning.lightning.base import IcoTask
from icolightning.lightning.trust import validated_arguments


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a checkpoint file; unreadable files raise CheckpointError."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch reports corrupt files with many exception types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"not a readable checkpoint ({type(exc).__name__}: {first_line})") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(path, "not a Lightning checkpoint (no state_dict)")
    return checkpoint


def load_module(ckpt_path: str | Path, map_location: str | torch.device | None = "cpu", **overrides: Any) -> IcoTask:
    """Rebuild the task stored in a checkpoint.

    The file is read once, weights-only (no pickled code runs); the task is built from the
    arguments `trust.validated_arguments` checked (the class and every `_target_` on the allowlist,
    no interpolation, sizes in range) and nothing else of the file but its weights. `overrides`
    (from the calling code, not the file) replace constructor arguments.
    """
    checkpoint = read_checkpoint(ckpt_path)
    cls, arguments = validated_arguments(checkpoint, ckpt_path, IcoTask)
    try:
        model = cls(**{**arguments, **overrides})
        state = {"state_dict": checkpoint["state_dict"], "hyper_parameters": arguments}
        model.on_load_checkpoint(state)
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(ckpt_path, f"does not rebuild its network ({type(exc).__name__}: {exc})") from exc
    return model.to(map_location) if map_location is not None else model
