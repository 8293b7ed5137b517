"""The job behind `icolightning-predict`: lat-lon netCDF in, masks and probabilities out on the
input's own grid (reading, regridding and writing are the data pipeline's `datamodules.predict`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from datamodules.netcdf_io import DataFileError, list_netcdf
from datamodules.predict import PredictionSource, PredictionWriter
from icolightning.errors import CheckpointError, UsageError
from icolightning.grid import IcoGrid
from icolightning.lightning.base import load_module
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import save_mask_maps

log = logging.getLogger(__name__)


def input_files(path: str | Path) -> list[Path]:
    path = Path(path)
    files = list_netcdf(path) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise DataFileError(path, "no netCDF input here (input= takes a file or a folder of *.nc files)")
    return files


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("gpu", "cuda"):
        raise UsageError(f"accelerator={accelerator} but this machine has no CUDA GPU; use accelerator=cpu")
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
        raise CheckpointError(cfg.ckpt_path, "not a climate segmentation checkpoint with normalisation statistics")
    model.to(pick_device(cfg.accelerator)).eval()
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = model.data_stats
    variables = list(stats["variables"])
    channel = variables.index("TMQ") if "TMQ" in variables else 0
    latlon = IcoGrid(int(stats["level"])).latlon
    written = {}
    for path in input_files(cfg.input):
        target = out_dir / f"{path.stem}_prediction.nc"
        written[str(path)] = str(predict_file(model, path, target, cfg, latlon, channel))
    return written


def predict_file(model: SegmentationModule, path: Path, target: Path, cfg: DictConfig, latlon: np.ndarray,
                 channel: int) -> Path:
    """Predict one file slab by slab (memory does not grow with its number of time steps)."""
    counts = np.zeros(len(model.class_names), dtype=np.int64)
    nan_vertices: dict[str, int] = {}
    with PredictionSource(path, model.data_stats) as source, PredictionWriter(target, source.grid) as writer:
        for start, inputs in source.slabs(cfg.slab_steps):
            probs = class_probabilities(model, inputs.x, cfg.batch_size)
            labels = probs.argmax(1)
            writer.write(start, labels, probs)
            counts += np.bincount(labels.reshape(-1).numpy(), minlength=len(counts))
            for name, missing in inputs.nan_vertices.items():
                nan_vertices[name] = nan_vertices.get(name, 0) + missing
            if cfg.plots and start == 0:
                save_mask_maps(target.with_suffix(".png"), latlon, labels[:1].numpy(), model.class_names,
                               background=inputs.x[:1, channel].numpy(),
                               title=f"{path.name}: predicted classes (first time step)")
    if any(nan_vertices.values()):
        log.warning("%s: vertices without data (set to the training mean): %s", path, nan_vertices)
    log.info("%s -> %s (%d time steps, classes %s)", path, target, source.grid.num_times, counts.tolist())
    return target
