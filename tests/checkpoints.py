"""Small checkpoint files written by hand the way Lightning writes them (for load, trust and CLI tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import torch

from datamodules.normalization import Normalization
from icolightning.lightning import SegmentationModule

VARIABLES = ("TMQ", "U850", "V850", "PSL")


def stats(level: int = 2, variables: tuple[str, ...] = VARIABLES) -> dict[str, Any]:
    """Normalisation statistics as a checkpoint stores them (mean 0, std 1: inputs pass unchanged)."""
    k = len(variables)
    return Normalization(variables, (0.0,) * k, (1.0,) * k, (0.9, 0.05, 0.05), 8, level, "bilinear").to_dict()


def unet_net(level: int = 2, channels: int = len(VARIABLES)) -> dict[str, Any]:
    return {"_target_": "icolightning.models.IcoUNet", "in_channels": channels, "num_classes": 3,
            "level": level, "widths": [2, 4]}


def write_checkpoint(path: Path, net: dict[str, Any] | None = None, level: int = 2,
                     hparams: dict[str, Any] | None = None, module: str | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """A SegmentationModule checkpoint with the real module's hyper-parameters, except for the
    entries in `hparams`, the `module` class name and `extra` top-level keys (so a tampered file
    differs only there)."""
    model = SegmentationModule(net or unet_net(level), data_stats=stats(level))
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, **(hparams or {})},
                  "icolightning_module": module or "icolightning.lightning.segmentation.SegmentationModule",
                  "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0, **(extra or {})}
    torch.save(checkpoint, path)
    return path
