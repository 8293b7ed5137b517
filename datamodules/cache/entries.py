"""The cache entries of lat-lon sources: one vertex store per (source file, preprocessing config).

Each entry is a `VertexStore` (`datamodules.cache.store`) at
`root/<config folder>/<stem>-<source fingerprint>.zarr`, written by time regions of at most
`_SLAB_BYTES` of source data, so a long multi-step file is regridded slab by slab, resumably and
(through `Scheduler`) on several processes or a Dask cluster. The entry name hashes everything
that changes its content: the source's path, size and mtime, the level, variables, method, label
variable, NaN policy and CACHE_VERSION (`datamodules.cache.version`; `REGRID_FINGERPRINTS` makes a
test fail when the regridding changes without a bump). One lock per config folder makes several
DDP ranks starting at once wait for one builder.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from datamodules.cache.build import fill_stores, open_or_create
from datamodules.cache.engine import Scheduler
from datamodules.cache.store import CacheError, VertexStore, build_lock
from datamodules.cache.version import CACHE_VERSION, REGRID_FINGERPRINTS
from datamodules.io.archive import ArchiveFile, ArchiveSource, is_archive
from datamodules.io.netcdf import LatLonFile
from datamodules.regrid import LABEL_METHODS, METHODS, latlon_to_ico
from icolightning.errors import DataFileError
from icolightning.grid import IcoGrid

__all__ = ["CACHE_VERSION", "REGRID_FINGERPRINTS", "CacheEntry", "CacheError", "PreprocessConfig",
           "ensure_cache", "entry_path", "source_fingerprint", "write_vertex_store"]
NAN_POLICIES = ("fill", "raise")
_SLAB_BYTES = 1 << 28


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything besides the source file that determines an entry's content."""

    level: int
    variables: tuple[str, ...]
    method: str = "bilinear"
    label_variable: str = "LABELS"
    nan_policy: str = "fill"
    label_method: str = "nearest"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.label_method not in LABEL_METHODS:
            raise ValueError(f"label_method must be one of {LABEL_METHODS}, got {self.label_method!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if not self.variables:
            raise ValueError("at least one variable is needed")

    @property
    def num_vertices(self) -> int:
        return IcoGrid(self.level).num_vertices

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:12]

    def folder_name(self) -> str:
        return f"level{self.level}-{self.method}-{self.label_method}-{len(self.variables)}vars-{self.digest()}"


def source_fingerprint(source: Path) -> str:
    """Identity of a source file's content as far as the file system tells: path, size, mtime."""
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


Source = Path | ArchiveSource
"""A ClimateNet-layout netCDF file, or one time period of a zarr store or multi-step file set."""


def entry_path(root: Path, config: PreprocessConfig, source: Source) -> Path:
    if isinstance(source, ArchiveSource):
        return Path(root) / config.folder_name() / f"{source.name}-{source.fingerprint()}.zarr"
    return Path(root) / config.folder_name() / f"{source.stem}-{source_fingerprint(source)}.zarr"


def open_source(source: str | Source, config: PreprocessConfig) -> LatLonFile:
    if isinstance(source, ArchiveSource):
        return source.open(config.variables, config.label_variable)
    return LatLonFile(source, config.variables, config.label_variable)


class CacheEntry(VertexStore):
    """The vertex store of one source netCDF file."""

    def check(self, config: PreprocessConfig) -> None:
        """Raise CacheError unless the store is complete and made for `config`."""
        super().check(steps=None, channels=len(config.variables), level=config.level)
        if tuple(self.meta["variables"]) != config.variables:
            raise CacheError(f"{self.path}: written for other variables")


def _time_slab(num_channels: int, shape: tuple[int, int]) -> int:
    return max(1, _SLAB_BYTES // (4 * num_channels * shape[0] * shape[1]))


def _regrid_labels(data: LatLonFile, config: PreprocessConfig, start: int, stop: int) -> np.ndarray:
    try:
        return latlon_to_ico(data.read_labels(start, stop), data.lat, data.lon, config.level,
                             config.label_method, True, *data.bounds)
    except ValueError as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(data.path, f"grid does not cover the sphere ({exc})", config.label_variable) from exc


def write_region(store_path: str, region: int, source: str | ArchiveSource, config: PreprocessConfig) -> dict:
    """Regrid the time steps of one region of `source` into its store; returns NaN counts."""
    store = VertexStore(store_path)
    start, stop = store.region_bounds(region)
    with open_source(source, config) as data:
        ico, missing = data.read_vertices(config.level, config.method, start, stop)
        if config.nan_policy == "raise" and missing.any():
            bad = [v for v, k in zip(config.variables, missing, strict=True) if k]
            problem = f"{int(missing.sum())} missing or non-finite (NaN/inf/_FillValue) values"
            raise DataFileError(data.path, problem, ", ".join(bad))
        labels = (_regrid_labels(data, config, start, stop) if config.label_variable
                  else np.zeros((stop - start, config.num_vertices), np.uint8))
    store.write_region(region, ico, labels)
    return {"source": str(data.path), "nan_source_points": missing.tolist(),
            "nan_vertices": np.isnan(ico).sum(axis=(0, 2)).tolist()}


def _create_args(source: Source, config: PreprocessConfig) -> dict:
    with open_source(source, config) as data:
        steps, times = data.num_times, data.times
        region = _time_slab(len(config.variables), (data.lat.size, data.lon.size))
        if isinstance(data, ArchiveFile):  # regions follow the archive's time chunks
            region = min(region, data.time_chunk)
    archive = isinstance(source, ArchiveSource)
    attrs = {"kind": "latlon", "source": source.source if archive else str(source.resolve()),
             "fingerprint": source.fingerprint() if archive else source_fingerprint(source),
             "period": list(source.period) if archive and source.period else None,
             "variables": list(config.variables), "method": config.method, "label_method": config.label_method}
    return {"level": config.level, "steps": steps, "channels": len(config.variables),
            "region_steps": region, "attrs": attrs, "times": times}


def _nan_warnings(results: Sequence[dict], config: PreprocessConfig) -> list[str]:
    totals: dict[str, np.ndarray] = {}
    for result in results:
        counts = np.array([result["nan_source_points"], result["nan_vertices"]])
        totals[result["source"]] = totals.get(result["source"], 0) + counts
    return [
        f"{source}: variable {name!r} has {k} missing or non-finite (NaN/inf/_FillValue) points; regridding "
        f"skipped them, and the {v} vertices left without any valid neighbour are set to the training mean"
        for source, counts in totals.items()
        for name, k, v in zip(config.variables, *counts, strict=True)
        if k
    ]


def _usable(entry: CacheEntry, config: PreprocessConfig) -> bool:
    """A complete entry made for `config` (checked without opening the source)."""
    try:
        entry.check(config)
        return True
    except CacheError:
        return False


def ensure_cache(
    sources: Sequence[Source],
    config: PreprocessConfig,
    root: str | Path,
    workers: int = 1,
    progress: bool = True,
    desc: str = "regridding to cache",
    scheduler: Scheduler | dict | str | None = None,
) -> list[CacheEntry]:
    """Entries for all sources, building missing regions and rebuilding unreadable entries.

    `scheduler` (see `Scheduler.from_config`; default: a pool of `workers` processes) runs the
    regions. The first bad file stops the run with its DataFileError; regions finished before it
    stay in the cache and a rerun writes only the rest.
    """
    folder = Path(root) / config.folder_name()
    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(folder):
        stores = []
        for source in sources:
            source = source if isinstance(source, ArchiveSource) else Path(source)
            store = CacheEntry(entry_path(root, config, source))
            if not _usable(store, config):
                store = open_or_create(store.path, _create_args(source, config))
            stores.append((store, (source if isinstance(source, ArchiveSource) else str(source), config)))
        results = fill_stores(stores, write_region, Scheduler.from_config(scheduler, workers), progress, desc)
    for message in _nan_warnings(results, config):
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return [CacheEntry(store.path) for store, _ in stores]


def write_vertex_store(source: str | Path, output: str | Path, config: PreprocessConfig,
                       scheduler: Scheduler | dict | str | None = None, progress: bool = True) -> VertexStore:
    """`icolightning-regrid IN OUT.zarr`: one netCDF file, glob or zarr archive into a vertex store at
    `output` (the same format as the cache; resumes an interrupted write of the same content)."""
    source = ArchiveSource(str(source)) if is_archive(source) else Path(source)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(output):
        store = open_or_create(output, _create_args(source, config))
        arg = source if isinstance(source, ArchiveSource) else str(source)
        fill_stores([(store, (arg, config))], write_region, Scheduler.from_config(scheduler), progress,
                    f"regridding to level {config.level}")
    return store
