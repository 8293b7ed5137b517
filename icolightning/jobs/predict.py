"""The job behind `icolightning-predict`: lat-lon netCDF files or an archive (a zarr store or a glob of
multi-step netCDF files) in, masks and probabilities out on the input's own grid (reading, regridding
and writing are the data pipeline's `datamodules.io.prediction`).

The files are the items of a Lightning predict loop, run by the Trainer of the `trainer` config
group: one process by default, or DDP ranks (`trainer=ddp_cpu`, `trainer=ddp`) that Lightning
launches. Rank r of N predicts files r, r + N, ..., so each output is written by one rank only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
import xarray as xr
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from datamodules.io.archive import is_archive, open_archive
from datamodules.io.netcdf import list_netcdf
from datamodules.io.prediction import PredictionSource, PredictionWriter
from datamodules.samplers import UnpaddedDistributedSampler
from icolightning.errors import CheckpointError, DataFileError
from icolightning.lightning import load_module
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import background_channel, save_latlon_prediction_map

log = logging.getLogger(__name__)


def input_files(path: str | Path) -> list[Path]:
    """The inputs named by `input=`: a file, a folder of *.nc files, or one archive (a store or a glob)."""
    if is_archive(path):
        return [Path(path)]
    path = Path(path)
    files = list_netcdf(path) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise DataFileError(path, "no netCDF input here (input= takes a file, a folder of *.nc files, a zarr store "
                                  "or a glob of netCDF files)")
    return files


def output_stem(source: Path) -> str:
    """A file's stem, a store's name without .zarr, or a glob's file pattern without its wildcards
    (`era5_*.nc` → `era5`; `*.nc` → the folder's name)."""
    name = source.name.removesuffix(".zarr")
    if set("*?[") & set(str(source)):
        name = re.sub(r"[*?\[\]]", "", Path(name).stem).strip("_-.") or source.parent.name
    return name


@torch.no_grad()
def class_probabilities(model: SegmentationModule, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[T, C, N] normalised inputs → [T, K, N] softmax probabilities, computed in batches."""
    chunks = [model(chunk.to(model.device)).float().softmax(1).cpu() for chunk in x.split(batch_size)]
    return torch.cat(chunks)


@dataclass(frozen=True)
class PredictOptions:
    """The knobs of conf/predict.yaml that shape one file's prediction."""

    batch_size: int = 4
    slab_steps: int = 32
    plots: bool = True
    input_method: str | None = None
    """Regridding of the inputs; None: the method the model was trained with."""
    output_label_method: str = "nearest"
    output_method: str = "bilinear"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PredictOptions:
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


def predict_file(model: SegmentationModule, path: Path, out_dir: Path, options: PredictOptions) -> Path:
    """Predict one file slab by slab (memory does not grow with its number of time steps)."""
    stats = model.data_stats
    variables = list(stats["variables"])
    channel = background_channel(variables)
    target = out_dir / f"{output_stem(path)}_prediction.nc"
    counts = np.zeros(len(model.class_names), dtype=np.int64)
    nan_vertices: dict[str, int] = {}
    with (PredictionSource(path, stats, options.input_method) as source,
          PredictionWriter(target, source.grid, True, options.output_label_method, options.output_method) as writer):
        for start, inputs in source.slabs(options.slab_steps):
            probs = class_probabilities(model, inputs.x, options.batch_size)
            labels = probs.argmax(1)
            writer.write(start, labels, probs)
            counts += np.bincount(labels.reshape(-1).numpy(), minlength=len(counts))
            for name, missing in inputs.nan_vertices.items():
                nan_vertices[name] = nan_vertices.get(name, 0) + missing
    if options.plots:
        save_prediction_figure(target, path, variables[channel], source.grid.lat_dim, source.grid.lon_dim,
                               model.class_names)
    if any(nan_vertices.values()):
        log.warning("%s: vertices without data (set to the training mean): %s", path, nan_vertices)
    log.info("%s -> %s (%d time steps, classes %s)", path, target, source.grid.num_times, counts.tolist())
    return target


def _first_step(var: xr.DataArray, lat_dim: str, lon_dim: str) -> np.ndarray:
    """[nlat, nlon] of the first step (first index of every other dimension)."""
    return var.isel({d: 0 for d in var.dims if d not in (lat_dim, lon_dim)}).transpose(lat_dim, lon_dim).values


def save_prediction_figure(target: Path, source: Path, variable: str, lat_dim: str, lon_dim: str,
                           class_names: list[str]) -> Path:
    """`<name>_prediction.png`: the written file's first step on its lat-lon grid, as users read it
    back: LABELS filled per cell, the predicted class's probability as opacity, `variable` underneath."""
    opened = open_archive(str(source)) if is_archive(source) else xr.open_dataset(source)
    with xr.open_dataset(target, engine="zarr" if target.suffix == ".zarr" else None) as out, opened as inp:
        labels = _first_step(out["LABELS"], lat_dim, lon_dim).astype(np.int64)
        probs = out["PROBABILITIES"].isel({d: 0 for d in out["PROBABILITIES"].dims
                                           if d not in ("class", lat_dim, lon_dim)})
        probs = probs.transpose("class", lat_dim, lon_dim).values
        chosen = np.take_along_axis(probs, labels[None], axis=0)[0]
        return save_latlon_prediction_map(target.with_suffix(".png"), out[lat_dim].values, out[lon_dim].values,
                                          labels, class_names, chosen, _first_step(inp[variable], lat_dim, lon_dim),
                                          f"{source.name}: predicted classes (first time step) over {variable}")


def _only_item(items: list[Path]) -> Path:
    return items[0]


class FilePredictor(L.LightningModule):
    """One input file per predict step, so that the Trainer launches the ranks and places the model.

    Its loader hands rank r of N the files r::N (`UnpaddedDistributedSampler`: no file twice,
    none left out); Lightning keeps a `DistributedSampler` it is given instead of adding its own.
    """

    def __init__(self, model: SegmentationModule, files: list[Path], out_dir: Path, options: PredictOptions) -> None:
        super().__init__()
        self.model = model
        self.files, self.out_dir, self.options = files, out_dir, options

    def predict_dataloader(self) -> DataLoader:
        sampler = UnpaddedDistributedSampler(self.files, num_replicas=self.trainer.world_size, rank=self.global_rank)
        return DataLoader(self.files, batch_size=1, sampler=sampler, collate_fn=_only_item)

    def predict_step(self, path: Path, batch_idx: int) -> tuple[str, str]:
        target = predict_file(self.model, path, self.out_dir, self.options)
        return str(path), str(target)


def predict(cfg: DictConfig) -> dict[str, str]:
    """Predict every input file (this rank's share under DDP); returns {input: output} paths."""
    model = load_module(cfg.ckpt_path)
    if not isinstance(model, SegmentationModule) or not model.data_stats:
        raise CheckpointError(cfg.ckpt_path, "not a climate segmentation checkpoint with normalisation statistics")
    files = input_files(cfg.input)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    predictor = FilePredictor(model, files, out_dir, PredictOptions.from_config(cfg))
    written = trainer.predict(predictor, return_predictions=True) or []
    return dict(written)
