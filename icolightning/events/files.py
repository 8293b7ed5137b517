"""Label files for the event tools, read one time step at a time.

Two kinds of netCDF file hold class labels (0 = BG, 1 = TC, 2 = AR):

* lat-lon files (ClimateNet's own, or `icolightning-predict` output): the labels go to the
  icosahedral vertices by area-weighted **majority** (the class covering most of each vertex's
  Voronoi cell, conservative weights, CF cell bounds when present), and events are found there;
* icosahedral files (`icolightning-regrid` output, dimension `vertex`): used as they are.

Frequencies are accumulated on the file's own grid, from the labels as stored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from datamodules.io.netcdf import LatLonFile, find_time_dim, open_netcdf
from datamodules.regrid import latlon_to_ico
from icolightning.classes import NUM_CLASSES, short_legend
from icolightning.errors import DataFileError
from icolightning.grid import level_of

VERTEX_DIM = "vertex"


@dataclass
class LabelStep:
    """One time step: labels on the file's grid and on the event vertices."""

    native: np.ndarray
    vertices: np.ndarray
    time: str | None


@dataclass(frozen=True)
class GridInfo:
    """The file's own grid: `latlon` with 1-D lat/lon, or `vertex` with per-vertex lat/lon."""

    kind: str
    lat: np.ndarray
    lon: np.ndarray
    lat_dim: str
    lon_dim: str

    def same_as(self, other: GridInfo) -> bool:
        return self.kind == other.kind and np.array_equal(self.lat, other.lat) and np.array_equal(self.lon, other.lon)


def _checked(path: Path, variable: str, raw: np.ndarray) -> np.ndarray:
    if np.issubdtype(raw.dtype, np.floating) and not (np.isfinite(raw).all() and np.array_equal(raw, np.round(raw))):
        raise DataFileError(path, "labels must be whole numbers without missing values", variable)
    labels = raw.astype(np.int64)
    bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
    if bad.size:
        raise DataFileError(path, f"labels must be {short_legend()}; found {bad[:10].tolist()}", variable)
    return labels


def _iter_latlon(path: Path, variable: str, level: int) -> tuple[GridInfo, int, Iterator[LabelStep]]:
    data = LatLonFile(path, (), variable)
    grid = GridInfo("latlon", data.lat, data.lon, data.lat_dim, data.lon_dim)
    lat_bounds, lon_bounds = data.bounds

    def steps() -> Iterator[LabelStep]:
        with data:
            times = data.times
            for t in range(data.num_times):
                native = data.read_labels(t, t + 1)[0]
                try:
                    ico = latlon_to_ico(native, data.lat, data.lon, level, "majority", True, lat_bounds, lon_bounds)
                except ValueError as exc:
                    raise DataFileError(path, f"cannot be regridded: {exc}", variable) from exc
                yield LabelStep(native, ico, times[t])

    return grid, data.num_times, steps()


def _vertex_times(ds: xr.Dataset, time_dim: str | None, count: int) -> list[str | None]:
    if time_dim in ds.variables and np.issubdtype(ds[time_dim].dtype, np.datetime64):
        return [str(np.datetime_as_string(v, unit="s")) for v in ds[time_dim].values]
    return [None] * count


def _iter_vertex(path: Path, variable: str) -> tuple[GridInfo, int, Iterator[LabelStep]]:
    ds = open_netcdf(path)
    try:
        var = ds[variable]
        try:
            level_of(ds.sizes[VERTEX_DIM])
        except ValueError as exc:
            raise DataFileError(path, str(exc), variable) from exc
        time_dim = find_time_dim(ds, (VERTEX_DIM, VERTEX_DIM))
        extra = [d for d in var.dims if d not in (VERTEX_DIM, time_dim)]
        if extra:
            raise DataFileError(path, f"has dims {var.dims}; expected ({time_dim or 'time'}, {VERTEX_DIM})", variable)
        lat = np.asarray(ds["lat"].values if "lat" in ds else [], np.float64)
        lon = np.asarray(ds["lon"].values if "lon" in ds else [], np.float64)
        grid = GridInfo("vertex", lat, lon, "lat", "lon")
        steps_count = ds.sizes[time_dim] if time_dim in var.dims else 1
        times = _vertex_times(ds, time_dim, steps_count)
    except BaseException:
        ds.close()
        raise

    def steps() -> Iterator[LabelStep]:
        with ds:
            for t in range(steps_count):
                raw = var.isel({time_dim: t}).values if time_dim in var.dims else var.values
                labels = _checked(path, variable, np.asarray(raw))
                yield LabelStep(labels, labels, times[t])

    return grid, steps_count, steps()


def open_labels(path: str | os.PathLike, variable: str, level: int) -> tuple[GridInfo, int, Iterator[LabelStep]]:
    """(grid, number of steps, iterator over the steps) of the labels in `path`.

    Lat-lon labels are regridded to `level` by majority; vertex files keep their own level.
    Problems with the file raise DataFileError naming it.
    """
    path = Path(path)
    with open_netcdf(path) as ds:
        if variable not in ds.data_vars:
            available = ", ".join(sorted(map(str, ds.data_vars))) or "none"
            raise DataFileError(path, f"not in the file; it has the variables: {available}", variable)
        on_vertices = VERTEX_DIM in ds[variable].dims
    return _iter_vertex(path, variable) if on_vertices else _iter_latlon(path, variable, level)


def label_times(path: str | os.PathLike, variable: str) -> list[str | None]:
    """ISO time of every step of the labels in `path` (None where the file has none), read
    without the labels: the event run needs the whole series' time step before it tracks."""
    path = Path(path)
    with open_netcdf(path) as ds:
        if variable in ds.data_vars and VERTEX_DIM in ds[variable].dims:
            time_dim = find_time_dim(ds, (VERTEX_DIM, VERTEX_DIM))
            return _vertex_times(ds, time_dim, ds.sizes[time_dim] if time_dim in ds[variable].dims else 1)
    with LatLonFile(path, (), variable) as data:
        return list(data.times)
