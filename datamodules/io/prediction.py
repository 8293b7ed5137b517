"""Prediction on arbitrary lat-lon netCDF files or archives, and writing masks back on their own grid.

The input goes through the same reader and regridding as training (but not the cache: a file
to predict on is read once) and is normalised with the statistics of the trained model, which
the caller passes in (e.g. from the checkpoint). Predicted vertex labels return to the file's
lat-lon grid by nearest neighbour (or area-weighted majority), probabilities by barycentric
interpolation (or conservatively).

An input is one netCDF file or an archive (a zarr store or a glob of multi-step netCDF files),
opened by the archive opener that training uses (`datamodules.io.archive`). Inputs are read
(`PredictionSource.slabs`/`read`) and written (`PredictionWriter.write`, or the zarr store of
`datamodules.io.prediction_zarr`) in slabs of time steps, so memory depends on the slab size and
the grid, not on the number of steps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from datamodules.io.archive import ArchiveSource, is_archive
from datamodules.io.atomic import atomic_path
from datamodules.io.cf import CF_VERSION, label_attrs, latlon_coords
from datamodules.io.netcdf import LatLonFile
from datamodules.io.slabs import SlabWriter
from datamodules.normalization import Normalization
from datamodules.regrid import ico_to_latlon
from icolightning.classes import CLASS_NAMES, LABEL_VARIABLE, labels_legend

DEFAULT_SLAB_STEPS = 32
"""Time steps per slab: at 384 x 576 with 4 variables a slab of 32 is about 110 MB of input."""


@dataclass
class FileGrid:
    """The lat-lon grid and time axis of an input file: what a prediction is written back onto."""

    path: Path | str
    """The input as it was named: a file, a store, a glob or a URL (kept a string: Path would mangle it)."""
    lat: np.ndarray
    lon: np.ndarray
    lat_dim: str
    lon_dim: str
    time_dim: str | None
    num_times: int
    coords: xr.Dataset = field(repr=False)
    """The file's lat/lon/time coordinates (with attributes), copied into the output."""


@dataclass
class PredictionInput:
    """Normalised vertex tensors of (part of) one file plus the grid to write results back on."""

    grid: FileGrid
    x: torch.Tensor
    """[T, C, N] float32, normalised like the training data."""
    nan_vertices: dict[str, int] = field(default_factory=dict)


def open_input(path: str | os.PathLike, variables: tuple[str, ...]) -> LatLonFile:
    """A netCDF file, or an archive through the opener that training uses; lazily, nothing loaded."""
    if is_archive(path):
        return ArchiveSource(str(path)).open(variables, None)
    return LatLonFile(path, variables)


class PredictionSource:
    """A CF lat-lon file or archive read for prediction, slab by slab (a context manager).

    `normalization` is a `Normalization` or its `to_dict()` (as stored in a checkpoint); it also
    fixes the variables, the level and, unless `method` is given, the regridding method.
    Missing values are skipped when regridding and vertices without data get the training mean.
    Problems with the file (variables, grid) raise DataFileError naming it.
    """

    def __init__(self, path: str | os.PathLike, normalization: Normalization | Mapping,
                 method: str | None = None) -> None:
        norm = normalization if isinstance(normalization, Normalization) else Normalization.from_dict(normalization)
        self.norm, self.method = norm, method or norm.method
        self.file = open_input(path, norm.variables)
        data = self.file
        keep = [d for d in (data.time_dim, data.lat_dim, data.lon_dim) if d and d in data.ds.variables]
        named = path if isinstance(path, str) and is_archive(path) else Path(path)
        self.grid = FileGrid(named, data.lat, data.lon, data.lat_dim, data.lon_dim, data.time_dim,
                             data.num_times, data.ds[keep].load() if keep else xr.Dataset())

    def __enter__(self) -> PredictionSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read(self, start: int = 0, stop: int | None = None) -> PredictionInput:
        """Time steps [start, stop) as normalised vertex tensors, with missing vertices per variable."""
        ico, _ = self.file.read_vertices(self.norm.level, self.method, start, stop)
        nan_vertices = dict(zip(self.norm.variables, np.isnan(ico).sum(axis=(0, 2)).tolist(), strict=True))
        return PredictionInput(self.grid, torch.from_numpy(self.norm.apply(ico)), nan_vertices)

    def slabs(self, steps: int = DEFAULT_SLAB_STEPS) -> Iterator[tuple[int, PredictionInput]]:
        """(first step, inputs) for consecutive slabs of at most `steps` time steps."""
        for start in range(0, self.grid.num_times, steps):
            yield start, self.read(start, min(start + steps, self.grid.num_times))


def load_for_prediction(
    path: str | os.PathLike, normalization: Normalization | Mapping, method: str | None = None
) -> PredictionInput:
    """Every time step of a file at once (small files; `PredictionSource.slabs` for large ones)."""
    with PredictionSource(path, normalization, method) as source:
        return source.read()


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


PROBABILITIES = "PROBABILITIES"
PROBABILITY_ATTRIBUTES = {"long_name": "Predicted class probabilities", "units": "1", "classes": " ".join(CLASS_NAMES)}


def label_attributes() -> dict[str, object]:
    """CF flag attributes of the predicted `LABELS` (the same in netCDF and zarr outputs)."""
    return {"long_name": f"Predicted labels: {labels_legend()}", **label_attrs(CLASS_NAMES)}


def to_latlon(grid: FileGrid, labels: np.ndarray | torch.Tensor, probabilities: np.ndarray | torch.Tensor | None,
              label_method: str = "nearest", method: str = "bilinear") -> tuple[np.ndarray, np.ndarray | None]:
    """Vertex labels [t, N] (and probabilities [t, K, N]) back on the input's grid: int8 [t, nlat, nlon]
    by `label_method`, float32 [t, K, nlat, nlon] by `method`."""
    mask = ico_to_latlon(_numpy(labels).astype(np.int8), grid.lat, grid.lon, method=label_method)
    if probabilities is None:
        return mask, None
    return mask, ico_to_latlon(_numpy(probabilities).astype(np.float32), grid.lat, grid.lon, method=method)


class PredictionWriter:
    """Predicted `LABELS` (time, lat, lon) int8 with CF flag attributes and, if asked, `PROBABILITIES`
    (time, class, lat, lon) float32 on an input file's grid, written slab by slab.

    Masks go back by `label_method` (nearest, or majority: the class covering most of each cell),
    probabilities by `method` (bilinear or conservative). A context manager: the file is written
    under a temporary name and renamed into place when the block ends without error and every
    time step was written.
    """

    def __init__(self, out_path: str | os.PathLike, grid: FileGrid, probabilities: bool = True,
                 label_method: str = "nearest", method: str = "bilinear") -> None:
        self.out_path, self.grid, self.probabilities = Path(out_path), grid, probabilities
        self.label_method, self.method = label_method, method
        self.time_dim = grid.time_dim or "time"
        self._stack = ExitStack()
        self._written = np.zeros(grid.num_times, dtype=bool)

    def __enter__(self) -> PredictionWriter:
        grid = self.grid
        tmp = self._stack.enter_context(atomic_path(self.out_path))
        own = {dim: grid.coords[dim].attrs for dim in (grid.lat_dim, grid.lon_dim) if dim in grid.coords}
        latlon = latlon_coords(grid.lat_dim, grid.lon_dim, grid.lat, grid.lon, own)
        skeleton = xr.Dataset(coords=dict(grid.coords.coords) | latlon, attrs={
            "Conventions": CF_VERSION, "title": "icolightning predictions", "source_file": str(grid.path),
            "history": f"icolightning-predict {os.path.basename(str(grid.path).rstrip('/'))}"})
        self.writer = SlabWriter(tmp, skeleton)
        self._stack.callback(self.writer.close)
        dims = (self.time_dim, grid.lat_dim, grid.lon_dim)
        sizes = {self.time_dim: grid.num_times, grid.lat_dim: grid.lat.size, grid.lon_dim: grid.lon.size,
                 "class": len(CLASS_NAMES)}
        self.writer.add_variable(LABEL_VARIABLE, dims, sizes, np.dtype(np.int8), label_attributes(), whole_dims=2)
        if self.probabilities:
            self.writer.add_variable(PROBABILITIES, (dims[0], "class", *dims[1:]), sizes, np.dtype(np.float32),
                                     PROBABILITY_ATTRIBUTES, whole_dims=2)
        return self

    def write(self, start: int, labels: np.ndarray | torch.Tensor,
              probabilities: np.ndarray | torch.Tensor | None = None) -> None:
        """Labels [t, N] (and probabilities [t, K, N]) of the time steps start .. start + t - 1."""
        labels = _numpy(labels)
        stop = start + labels.shape[0]
        if labels.ndim != 2 or stop > self.grid.num_times:
            raise ValueError(f"labels must be [t, N] within the file's {self.grid.num_times} steps, got "
                             f"{labels.shape} at step {start}")
        if (probabilities is not None) != self.probabilities:
            raise ValueError("probabilities must be given exactly when the writer was made with probabilities=True")
        mask, probs = to_latlon(self.grid, labels, probabilities, self.label_method, self.method)
        self.writer.write(LABEL_VARIABLE, (slice(start, stop),), mask)
        if probs is not None:
            self.writer.write(PROBABILITIES, (slice(start, stop),), probs)
        self._written[start:stop] = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None and not self._written.all():
            missing = int((~self._written).sum())
            exc = ValueError(f"{self.out_path}: {missing} of {self.grid.num_times} time steps were not written")
            self._stack.__exit__(type(exc), exc, None)
            raise exc
        self._stack.__exit__(exc_type, exc, tb)


def write_prediction(
    out_path: str | os.PathLike,
    inputs: PredictionInput,
    labels: np.ndarray | torch.Tensor,
    probabilities: np.ndarray | torch.Tensor | None = None,
    label_method: str = "nearest",
    method: str = "bilinear",
) -> Path:
    """Write labels [T, N] (and probabilities [T, K, N]) of a whole file read by `load_for_prediction`."""
    expected = (inputs.grid.num_times, inputs.x.shape[-1])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must be [T, N] = {expected}, got {tuple(labels.shape)}")
    with PredictionWriter(out_path, inputs.grid, probabilities is not None, label_method, method) as writer:
        writer.write(0, labels, probabilities)
    return Path(out_path)
