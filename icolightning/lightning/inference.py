"""The job behind `icolightning-predict`: lat-lon netCDF in, masks and probabilities out on the
input's own grid (reading, regridding and writing are the data pipeline's `datamodules.predict`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from datamodules.netcdf_io import list_netcdf
from datamodules.predict import load_for_prediction, write_prediction
from icolightning.grid import IcoGrid
from icolightning.lightning.base import load_module
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import save_mask_maps

log = logging.getLogger(__name__)


def input_files(path: str | Path) -> list[Path]:
    path = Path(path)
    files = list_netcdf(path) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise SystemExit(f"no netCDF input at {path}")
    return files


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("gpu", "cuda"):
        raise SystemExit("accelerator=gpu requested but CUDA is not available")
    return torch.device("cpu")


@torch.no_grad()
def class_probabilities(model: SegmentationModule, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[T, C, N] normalised inputs → [T, K, N] softmax probabilities, computed in batches."""
    chunks = [model(chunk.to(model.device)).float().softmax(1).cpu() for chunk in x.split(batch_size)]
    return torch.cat(chunks)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input file; returns {input: output} paths."""
    model = load_module(cfg.ckpt_path)
    if not isinstance(model, SegmentationModule) or not model.data_stats:
        raise SystemExit(f"{cfg.ckpt_path} is not a climate segmentation checkpoint with normalisation")
    model.to(pick_device(cfg.accelerator)).eval()
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = model.data_stats
    variables = list(stats["variables"])
    channel = variables.index("TMQ") if "TMQ" in variables else 0
    latlon = IcoGrid(int(stats["level"])).latlon
    written = {}
    for path in input_files(cfg.input):
        inputs = load_for_prediction(path, stats, cfg.get("input_method"))
        if any(inputs.nan_vertices.values()):
            log.warning("%s: vertices without data (set to the training mean): %s", path, inputs.nan_vertices)
        probs = class_probabilities(model, inputs.x, cfg.batch_size)
        labels = probs.argmax(1)
        target = write_prediction(out_dir / f"{path.stem}_prediction.nc", inputs, labels, probs,
                                  cfg.get("output_label_method", "nearest"), cfg.get("output_method", "bilinear"))
        written[str(path)] = str(target)
        if cfg.plots:
            save_mask_maps(out_dir / f"{path.stem}_prediction.png", latlon, labels[:1].numpy(),
                           model.class_names, background=inputs.x[:1, channel].numpy(),
                           title=f"{path.name}: predicted classes (first time step)")
        log.info("%s -> %s (%d time steps, classes %s)", path, target, len(labels),
                 np.bincount(labels.reshape(-1).numpy(), minlength=len(model.class_names)).tolist())
    return written
