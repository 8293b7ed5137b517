"""Predictions as one zarr store, written region by region by any number of processes.

The store holds what the netCDF output holds (`LABELS` (time, lat, lon) int8 with CF flag
attributes and `PROBABILITIES` (time, class, lat, lon) float32 on the input's own grid, the input's
coordinates with their attributes) and, if asked, the vertex outputs `VERTEX_LABELS` (time, vertex)
and `VERTEX_PROBABILITIES` (time, class, vertex) with `vertex_lat`/`vertex_lon`.

A region is `region_steps` consecutive time steps and exactly one zarr chunk of every array, so
processes that write different regions never touch the same file: under DDP every rank writes its
own regions into the one store and nothing is gathered. A region counts once its hidden marker
`.region-NNNNNN` exists (written after its arrays); `.complete` is written when all are in. The
empty store is built under a temporary name and renamed into place, so a store at the output path
always has its whole layout. Its `prediction_fingerprint` attribute (checkpoint, input, options)
decides what a rerun does: the same fingerprint resumes (regions without a marker are redone, whole),
another one replaces the store. Unwritten steps read as LABELS -1.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr

from datamodules.io.atomic import atomic_path, remove_stale_temporaries, temporary_path
from datamodules.io.cf import CF_VERSION, latlon_coords
from datamodules.io.prediction import (
    PROBABILITIES,
    PROBABILITY_ATTRIBUTES,
    FileGrid,
    label_attributes,
    to_latlon,
)
from icolightning.classes import CLASS_NAMES, LABEL_VARIABLE
from icolightning.errors import DataError, DataFileError
from icolightning.grid import IcoGrid

log = logging.getLogger(__name__)

TITLE = "icolightning predictions"
_COMPLETE = ".complete"
_REGION = ".region-"
_KEPT_ENCODING = ("units", "calendar", "dtype")


def _json_attrs(attrs: dict[str, object]) -> dict[str, object]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in attrs.items()}


class ZarrPredictionStore:
    """The prediction store at `path` for the input described by `grid` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, grid: FileGrid, *, region_steps: int, fingerprint: str,
                 vertex_level: int | None = None, label_method: str = "nearest", method: str = "bilinear") -> None:
        self.path, self.grid, self.region_steps = Path(path), grid, max(1, int(region_steps))
        self.fingerprint, self.vertex_level = fingerprint, vertex_level
        self.label_method, self.method = label_method, method
        self.time_dim = grid.time_dim or "time"

    # ------------------------------------------------------------------ layout
    @property
    def num_regions(self) -> int:
        return -(-self.grid.num_times // self.region_steps)

    def region_bounds(self, region: int) -> tuple[int, int]:
        start = region * self.region_steps
        return start, min(self.grid.num_times, start + self.region_steps)

    @property
    def complete(self) -> bool:
        return (self.path / _COMPLETE).is_file()

    def done_regions(self) -> set[int]:
        names = (p.name.removeprefix(_REGION) for p in self.path.glob(f"{_REGION}*"))
        return {int(name) for name in names if name.isdigit()}

    def pending(self) -> list[int]:
        """Regions still to write, in order (every process lists them before any writes)."""
        return sorted(set(range(self.num_regions)) - self.done_regions())

    # ------------------------------------------------------------------ creating
    def existing_fingerprint(self) -> str | None:
        """The fingerprint of the prediction store at `path`, None if there is none; anything else there
        (another zarr store, a file, a folder of other things) raises DataFileError."""
        if not self.path.exists():
            return None
        try:
            attrs = dict(zarr.open_group(self.path, mode="r").attrs)
        except Exception as exc:
            raise DataFileError(self.path, "exists and is not a zarr store; choose another output") from exc
        if attrs.get("title") != TITLE:
            raise DataFileError(self.path, "exists and is not an icolightning prediction store; choose another "
                                           "output or remove it")
        return str(attrs.get("prediction_fingerprint"))

    def prepare(self) -> None:
        """Keep a store this run resumes (same fingerprint), else build a new empty one; one process only."""
        for stale in remove_stale_temporaries(self.path):
            log.warning("removed %s, left by a killed run", stale)
        found = self.existing_fingerprint()
        if found == self.fingerprint:
            return
        if found is not None:
            log.warning("%s: predictions of another checkpoint, input or options; replacing them", self.path)
        tmp = temporary_path(self.path)
        try:
            self._create(tmp)
            if found is not None:
                shutil.rmtree(self.path)
            os.replace(tmp, self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _create(self, path: Path) -> None:
        grid, steps = self.grid, self.region_steps
        own = {dim: grid.coords[dim].attrs for dim in (grid.lat_dim, grid.lon_dim) if dim in grid.coords}
        coords = grid.coords.copy().assign_coords(latlon_coords(grid.lat_dim, grid.lon_dim, grid.lat, grid.lon, own))
        for var in coords.variables.values():
            var.encoding = {k: v for k, v in var.encoding.items() if k in _KEPT_ENCODING}
        attrs = {"Conventions": CF_VERSION, "title": TITLE, "source_file": str(grid.path),
                 "prediction_fingerprint": self.fingerprint,
                 "region_steps": steps, "label_method": self.label_method, "probability_method": self.method}
        xr.Dataset(coords=coords.coords, attrs=attrs).to_zarr(path, mode="w", consolidated=False)
        group = zarr.open_group(path, mode="r+")
        t, k, grid_shape = grid.num_times, len(CLASS_NAMES), (grid.lat.size, grid.lon.size)
        latlon = (grid.lat_dim, grid.lon_dim)

        def array(name: str, shape: tuple, dims: tuple, dtype: str, attributes: dict) -> zarr.Array:
            fill = -1 if dtype == "int8" else float("nan")
            return group.create_array(name, shape=shape, chunks=(steps, *shape[1:]), dtype=dtype, fill_value=fill,
                                      dimension_names=dims, attributes=_json_attrs(attributes))

        array(LABEL_VARIABLE, (t, *grid_shape), (self.time_dim, *latlon), "int8", label_attributes())
        array(PROBABILITIES, (t, k, *grid_shape), (self.time_dim, "class", *latlon), "float32",
              PROBABILITY_ATTRIBUTES)
        if self.vertex_level is not None:
            ico = IcoGrid(self.vertex_level)
            n = ico.num_vertices
            on_vertices = {"coordinates": "vertex_lat vertex_lon"}
            array(f"VERTEX_{LABEL_VARIABLE}", (t, n), (self.time_dim, "vertex"), "int8",
                  label_attributes() | on_vertices)
            array(f"VERTEX_{PROBABILITIES}", (t, k, n), (self.time_dim, "class", "vertex"), "float32",
                  PROBABILITY_ATTRIBUTES | on_vertices)
            for name, column, units in (("vertex_lat", 0, "degrees_north"), ("vertex_lon", 1, "degrees_east")):
                coord = group.create_array(name, shape=(n,), dtype="float64", dimension_names=("vertex",),
                                           attributes={"units": units, "standard_name": name[7:] + "itude"})
                coord[:] = ico.latlon[:, column]

    # ------------------------------------------------------------------ writing
    def write_region(self, region: int, labels: np.ndarray | torch.Tensor,
                     probabilities: np.ndarray | torch.Tensor) -> None:
        """Vertex labels [t, N] and probabilities [t, K, N] of one region's steps; the marker last."""
        start, stop = self.region_bounds(region)
        if labels.shape[0] != stop - start:
            raise ValueError(f"region {region} holds steps {start}..{stop - 1}, got {labels.shape[0]} steps")
        mask, probs = to_latlon(self.grid, labels, probabilities, self.label_method, self.method)
        group = zarr.open_group(self.path, mode="r+")
        group[LABEL_VARIABLE][start:stop] = mask
        group[PROBABILITIES][start:stop] = probs
        if self.vertex_level is not None:
            group[f"VERTEX_{LABEL_VARIABLE}"][start:stop] = np.asarray(labels, dtype=np.int8)
            group[f"VERTEX_{PROBABILITIES}"][start:stop] = np.asarray(probabilities, dtype=np.float32)
        with atomic_path(self.path / f"{_REGION}{region:06d}") as tmp:
            tmp.write_text(json.dumps({"start": start, "stop": stop}))

    def finish(self) -> None:
        """Mark the store complete (every region written) and consolidate its metadata for xarray."""
        missing = self.pending()
        if missing:
            raise DataError(f"{self.path}: regions {missing[:5]} of {self.num_regions} are not written")
        with warnings.catch_warnings():  # consolidated metadata is for xarray; zarr 3 calls it non-standard
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(self.path)
        with atomic_path(self.path / _COMPLETE) as tmp:
            tmp.write_text("")
