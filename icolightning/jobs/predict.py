"""The job behind `icolightning-predict`: lat-lon netCDF files or an archive (a zarr store or a glob of
multi-step netCDF files) in, masks and probabilities out on the input's own grid (reading, regridding
and writing are the data pipeline's `datamodules.io.prediction`).

The files are the items of a Lightning predict loop, run by the Trainer of the `trainer` config
group: one process by default, or DDP ranks (`trainer=ddp_cpu`, `trainer=ddp`) that Lightning
launches. Rank r of N predicts files r, r + N, ..., so each output is written by one rank only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
import xarray as xr
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from datamodules.io.archive import ArchiveSource, is_archive, open_archive
from datamodules.io.netcdf import list_netcdf
from datamodules.io.prediction import PredictionSource, PredictionWriter
from datamodules.io.prediction_zarr import ZarrPredictionStore
from datamodules.samplers import UnpaddedDistributedSampler
from icolightning.errors import CheckpointError, DataFileError, UsageError
from icolightning.lightning import load_module
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import background_channel, save_latlon_prediction_map

log = logging.getLogger(__name__)


Input = Path | str
"""A netCDF file, or an archive as `input=` names it (a string, so that a URL stays one)."""


def input_files(path: str | Path) -> list[Input]:
    """The inputs named by `input=`: a file, a folder of *.nc files, or one archive (a store or a glob)."""
    if is_archive(path):
        return [str(path)]
    path = Path(path)
    files = list_netcdf(path) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise DataFileError(path, "no netCDF input here (input= takes a file, a folder of *.nc files, a zarr store "
                                  "or a glob of netCDF files)")
    return files


def output_stem(source: Input) -> str:
    """A file's stem, a store's name without .zarr, or a glob's file pattern without its wildcards
    (`era5_*.nc` → `era5`; `*.nc` → the folder's name)."""
    source = Path(str(source).rstrip("/"))
    if set("*?[") & set(str(source)):
        return re.sub(r"[*?\[\]]", "", source.stem).strip("_-.") or source.parent.name
    return source.stem


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
    vertex_outputs: bool = False
    """zarr output only: also VERTEX_LABELS / VERTEX_PROBABILITIES on the icosahedral vertices."""

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PredictOptions:
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


def predict_file(model: SegmentationModule, path: Input, out_dir: Path, options: PredictOptions) -> Path:
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


def save_prediction_figure(target: Path, source: Input, variable: str, lat_dim: str, lon_dim: str,
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
                                          f"{Path(str(source)).name}: predicted classes (first step) over {variable}")


def _only_item(items: list[Path]) -> Path:
    return items[0]


class FilePredictor(L.LightningModule):
    """One input file per predict step, so that the Trainer launches the ranks and places the model.

    Its loader hands rank r of N the files r::N (`UnpaddedDistributedSampler`: no file twice,
    none left out); Lightning keeps a `DistributedSampler` it is given instead of adding its own.
    """

    def __init__(self, model: SegmentationModule, files: list[Input], out_dir: Path, options: PredictOptions) -> None:
        super().__init__()
        self.model = model
        self.files, self.out_dir, self.options = files, out_dir, options

    def predict_dataloader(self) -> DataLoader:
        sampler = UnpaddedDistributedSampler(self.files, num_replicas=self.trainer.world_size, rank=self.global_rank)
        return DataLoader(self.files, batch_size=1, sampler=sampler, collate_fn=_only_item)

    def predict_step(self, path: Input, batch_idx: int) -> tuple[str, str]:
        target = predict_file(self.model, path, self.out_dir, self.options)
        return str(path), str(target)


def prediction_fingerprint(ckpt_path: str | Path, source: Input, options: PredictOptions) -> str:
    """What a zarr output's values depend on: the checkpoint file, the input and the options (not plots)."""
    ckpt = Path(ckpt_path).stat()
    # the same input named relative or absolute is the same input (a URL stays as given)
    where = str(source) if "://" in str(source) else os.path.abspath(source)
    if is_archive(source):
        found = ArchiveSource(where).fingerprint()
    else:
        stat = Path(source).stat()
        found = f"{stat.st_size}|{stat.st_mtime_ns}"
    kept = {k: v for k, v in asdict(options).items() if k != "plots"}
    parts = [str(Path(ckpt_path).resolve()), ckpt.st_size, ckpt.st_mtime_ns, where, found, kept]
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class RegionPredictor(L.LightningModule):
    """One time region of one input per predict step, written into the one zarr store by the rank
    that predicted it (nothing is gathered).

    Rank 0 prepares the store (creates it, or keeps one this run resumes) before any rank lists the
    regions still to write; rank r of N then predicts those regions r::N. Once every rank is done
    (`teardown`, which runs also on a rank that had nothing to do), rank 0 marks the store complete.
    """

    def __init__(self, model: SegmentationModule, source: Input, target: Path, options: PredictOptions,
                 fingerprint: str) -> None:
        super().__init__()
        self.model = model
        self.source_path, self.target, self.options, self.fingerprint = source, target, options, fingerprint

    def setup(self, stage: str) -> None:
        options = self.options
        self.source = PredictionSource(self.source_path, self.model.data_stats, options.input_method)
        level = int(self.model.data_stats["level"]) if options.vertex_outputs else None
        self.store = ZarrPredictionStore(self.target, self.source.grid, region_steps=options.slab_steps,
                                         fingerprint=self.fingerprint, vertex_level=level,
                                         label_method=options.output_label_method, method=options.output_method)
        if self.global_rank == 0:
            self.store.prepare()
        self.trainer.strategy.barrier("prediction_store_ready")
        self.regions = self.store.pending()
        self.trainer.strategy.barrier("prediction_regions_listed")

    def predict_dataloader(self) -> DataLoader:
        sampler = UnpaddedDistributedSampler(self.regions, num_replicas=self.trainer.world_size, rank=self.global_rank)
        return DataLoader(self.regions, batch_size=1, sampler=sampler, collate_fn=_only_item)

    def predict_step(self, region: int, batch_idx: int) -> int:
        start, stop = self.store.region_bounds(region)
        inputs = self.source.read(start, stop)
        probs = class_probabilities(self.model, inputs.x, self.options.batch_size)
        self.store.write_region(region, probs.argmax(1), probs)
        if any(inputs.nan_vertices.values()):
            log.warning("%s steps %d..%d: vertices without data (set to the training mean): %s",
                        self.source_path, start, stop - 1, inputs.nan_vertices)
        log.info("%s steps %d..%d -> %s", self.source_path, start, stop - 1, self.target)
        return region

    def teardown(self, stage: str) -> None:
        self.source.__exit__()
        self.trainer.strategy.barrier("predictions_written")
        if self.global_rank != 0:
            return
        self.store.finish()
        if self.options.plots:
            variables = list(self.model.data_stats["variables"])
            grid = self.source.grid
            save_prediction_figure(self.target, self.source_path, variables[background_channel(variables)],
                                   grid.lat_dim, grid.lon_dim, self.model.class_names)


def _zarr_predictor(model: SegmentationModule, cfg: DictConfig, files: list[Input], options: PredictOptions
                    ) -> RegionPredictor:
    if len(files) != 1:
        raise UsageError(f"output={cfg.output} (a zarr store) takes one input: a file, a zarr store or a glob "
                         f"(for a folder of files: input='{cfg.input}/*.nc')")
    target = Path(cfg.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = prediction_fingerprint(cfg.ckpt_path, files[0], options)
    with PredictionSource(files[0], model.data_stats, options.input_method) as source:  # bad input fails here
        ZarrPredictionStore(target, source.grid, region_steps=options.slab_steps,
                            fingerprint=fingerprint).existing_fingerprint()  # so does another store in the way
    return RegionPredictor(model, files[0], target, options, fingerprint)


def predict(cfg: DictConfig) -> dict[str, str]:
    """Predict every input (this rank's share under DDP); returns {input: output} paths.

    An output ending in .zarr is one store for one input, written by time regions; otherwise the
    output is a folder with one `<name>_prediction.nc` per input file or archive.
    """
    model = load_module(cfg.ckpt_path)
    if not isinstance(model, SegmentationModule) or not model.data_stats:
        raise CheckpointError(cfg.ckpt_path, "not a climate segmentation checkpoint with normalisation statistics")
    files = input_files(cfg.input)
    options = PredictOptions.from_config(cfg)
    predictor: L.LightningModule
    if str(cfg.output).rstrip("/").endswith(".zarr"):
        predictor = _zarr_predictor(model, cfg, files, options)
    else:
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        predictor = FilePredictor(model, files, Path(cfg.output), options)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    written = trainer.predict(predictor, return_predictions=True) or []
    if isinstance(predictor, RegionPredictor):
        return {str(files[0]): str(predictor.target)}
    return dict(written)
