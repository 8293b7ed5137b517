"""Archives beyond the ClimateNet folder layout: a zarr store or a glob of multi-step netCDF files.

`ArchiveSource` names one time period of an archive (optionally with labels from a second store
aligned on time) and opens it as a `LatLonFile`, so the cache reads it by time slabs exactly like a
single file. Zarr stores open lazily with `xr.open_zarr` (a local path, or any fsspec URL that the
environment can reach, passed to xarray as it is); file sets with `xr.open_mfdataset` (combined by
their time coordinate). A step that cannot be read raises a one-line DataFileError naming the
archive and the time steps.
"""

from __future__ import annotations

import glob
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from datamodules.io.netcdf import LatLonFile
from icolightning.errors import DataFileError

_GLOB_CHARS = set("*?[")


def is_archive(source: str | Path) -> bool:
    """A zarr store (path ending in .zarr, a folder with zarr metadata, or a URL) or a glob of files."""
    text = str(source)
    if "://" in text or _GLOB_CHARS & set(text) or text.rstrip("/").endswith(".zarr"):
        return True
    folder = Path(text)
    return folder.is_dir() and any((folder / name).is_file() for name in ("zarr.json", ".zgroup", ".zmetadata"))


def _files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataFileError(pattern, "no files match this pattern")
    return files


def consolidate(path: str | Path) -> None:
    """Consolidate a zarr store's metadata, so that xarray opens it with one read. zarr 3 warns on
    every write that consolidated metadata is not yet in its specification (zarr and xarray read it),
    and about every file that is not zarr's own (the vertex store's region and completion markers)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Object at \.\S+ is not recognized", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def _open_zarr(source: str) -> xr.Dataset:
    """With consolidated metadata when the store has it (one read instead of one per array), else
    without; xarray's own fallback (`consolidated=None`) warns on every open, by every worker."""
    try:
        return xr.open_zarr(source, consolidated=True)
    except ValueError:  # no consolidated metadata in this store
        return xr.open_zarr(source, consolidated=False)


def open_archive(source: str) -> xr.Dataset:
    """Open a zarr store or a glob of netCDF files lazily; failures raise DataFileError."""
    try:
        if _GLOB_CHARS & set(source):
            return xr.open_mfdataset(_files(source), combine="by_coords", engine="netcdf4", cache=False,
                                     data_vars="minimal", coords="minimal", compat="override", join="exact")
        return _open_zarr(source)
    except DataFileError:
        raise
    except Exception as exc:
        problem = f"cannot be opened as a zarr store or netCDF files ({type(exc).__name__}: {exc})"
        raise DataFileError(source, problem) from exc


def _select_period(ds: xr.Dataset, source: str, period: tuple[str, str] | None) -> xr.Dataset:
    if period is None:
        return ds
    if "time" not in ds.dims:
        raise DataFileError(source, "a time period is configured but the archive has no 'time' dimension")
    selected = ds.sel(time=slice(str(period[0]), str(period[1])))
    if selected.sizes["time"] == 0:
        raise DataFileError(source, f"no time steps in the period {period[0]} .. {period[1]}")
    return selected


@dataclass(frozen=True)
class ArchiveSource:
    """One time period of an archive; `labels` is a second store holding `label_variable` on the same times."""

    source: str
    period: tuple[str, str] | None = None
    labels: str | None = None

    @property
    def name(self) -> str:
        stem = Path(self.source.rstrip("/")).name.replace("*", "_").removesuffix(".zarr") or "archive"
        return f"{stem}-{self.period[0]}-{self.period[1]}" if self.period else stem

    def fingerprint(self) -> str:
        """Path/URL, period, labels and, for local data, the size and mtime of the metadata or files."""
        parts = [self.source, str(self.period), str(self.labels)]
        for location in (self.source, self.labels):
            if location is None or "://" in location:
                continue
            paths = _files(location) if _GLOB_CHARS & set(location) else list(Path(location).glob("*.json")) + list(
                Path(location).glob(".z*"))
            parts += [f"{p}|{Path(p).stat().st_size}|{Path(p).stat().st_mtime_ns}" for p in sorted(map(str, paths))]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]

    def open(self, variables: tuple[str, ...], label_variable: str | None) -> LatLonFile:
        ds = _select_period(open_archive(self.source), self.source, self.period)
        if self.labels is not None and label_variable is not None:
            other = open_archive(self.labels)
            try:
                ds = ds.assign({label_variable: other[label_variable].sel(time=ds["time"])})
            except (KeyError, IndexError) as exc:
                raise DataFileError(self.labels, f"labels are not on the archive's times ({exc})",
                                    label_variable) from exc
        return ArchiveFile(self.source, variables, label_variable, ds)


class ArchiveFile(LatLonFile):
    """A `LatLonFile` over an archive: read errors also name the time steps."""

    @property
    def time_chunk(self) -> int:
        """Steps per stored chunk of the first variable (regions of the vertex store follow it)."""
        chunks = self.ds[self.variables[0]].chunks
        if not chunks or self.time_dim not in self.ds[self.variables[0]].dims:
            return self.num_times
        return int(chunks[self.ds[self.variables[0]].dims.index(self.time_dim)][0])

    def _load(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            # synchronous: inside a Dask worker the default scheduler is the cluster itself, and every
            # read would travel through it as tasks
            return np.asarray(self._slab(name, start, stop).compute(scheduler="synchronous").values)
        except Exception as exc:
            steps = self.times[start:stop]
            where = f"time steps {start}..{stop - 1} ({steps[0]} .. {steps[-1]})"
            raise DataFileError(self.path, f"{where} cannot be read ({type(exc).__name__}: {exc})", name) from exc
