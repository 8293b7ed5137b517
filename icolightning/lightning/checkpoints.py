"""Reading a checkpoint file and rebuilding the task it stores, after the trust check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch

from icolightning.errors import CheckpointError
from icolightning.lightning.base import IcoTask
from icolightning.lightning.trust import check_checkpoint


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
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "not a Lightning checkpoint (no state_dict)")
    return checkpoint


def load_module(ckpt_path: str | Path, map_location: str | torch.device | None = "cpu", **overrides: Any) -> IcoTask:
    """Rebuild the task stored in a checkpoint.

    The file loads weights-only (no pickled code runs) and the task class and every `_target_`
    it names must pass `trust.check_checkpoint` before anything is imported or built.
    """
    checkpoint = read_checkpoint(ckpt_path)
    cls = hydra.utils.get_class(check_checkpoint(checkpoint, ckpt_path, IcoTask))
    try:
        return cls.load_from_checkpoint(ckpt_path, map_location=map_location, weights_only=True, **overrides)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(ckpt_path, f"does not rebuild its network ({type(exc).__name__}: {exc})") from exc
