"""On-disk cache of regridded files: one directory per (source file, preprocessing config).

Each entry holds memory-mappable `fields.npy` (float32 [T, C, N]), `labels.npy` (uint8 [T, N]),
per-sample partial statistics `stats.npz` (so the normalisation of any subset, e.g. the
training split without its validation tail, needs no pass over the data) and `meta.json`.

An entry is built in a private temporary directory and moved into place with one atomic
rename, so a crash never leaves half an entry, a rerun resumes with the missing files, and
several DDP ranks building the same entry at once are harmless (the first rename wins, the
others discard their copy). The entry name hashes everything that changes its content: the
source's path, size and mtime, the level, variables, method, label variable, NaN policy and
CACHE_VERSION (bump it whenever preprocessing changes; `REGRID_FINGERPRINTS` makes a test fail
when the regridding changes without a bump).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from datamodules.io.netcdf import LatLonFile
from datamodules.regrid import LABEL_METHODS, METHODS, latlon_to_ico
from icolightning.classes import NUM_CLASSES
from icolightning.errors import DataError, DataFileError
from icolightning.grid import IcoGrid

CACHE_VERSION = 4
REGRID_FINGERPRINTS: dict[int, str] = {
    2: "ac2e219bcffeed50",
    3: "9107f1fcd69424ef",
    4: "c5d6f7e1fdcb0d00",
}
"""`datamodules.regrid.regrid_fingerprint()` of the regridding each CACHE_VERSION was made with.

A test compares the current fingerprint with the entry of CACHE_VERSION: when the regridding
changes, bump CACHE_VERSION and add the new fingerprint here (old caches are then rebuilt)."""
NAN_POLICIES = ("fill", "raise")
_SLAB_BYTES = 1 << 28
_TMP_PREFIX = ".tmp-"


class CacheError(DataError, RuntimeError):
    """An existing cache entry cannot be used (truncated, corrupt, or from another config)."""


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


def entry_path(root: Path, config: PreprocessConfig, source: Path) -> Path:
    return Path(root) / config.folder_name() / f"{source.stem}-{source_fingerprint(source)}"


@dataclass(frozen=True)
class CachedArrays:
    """A finished cache folder: `fields.npy` [T, C, N] float32, `labels.npy` [T, N] uint8, per-sample
    partial statistics `stats.npz` and `meta.json`; arrays open memory-mapped, read-only.
    The one definition of that layout, shared by the per-file netCDF cache and the per-split
    climate_sphere_l5 cache."""

    path: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    def fields(self) -> np.ndarray:
        return np.load(self.path / "fields.npy", mmap_mode="r")

    def labels(self) -> np.ndarray:
        return np.load(self.path / "labels.npy", mmap_mode="r")

    def stats(self) -> dict[str, np.ndarray]:
        with np.load(self.path / "stats.npz") as data:
            return {k: data[k] for k in data.files}


class CacheEntry(CachedArrays):
    """The cache of one source netCDF file."""

    def check(self, config: PreprocessConfig) -> None:
        """Raise CacheError unless every file is present, parseable and of the right shape."""
        try:
            meta = self.meta
            steps, channels = meta["num_times"], len(config.variables)
            expected = {
                "fields": ((steps, channels, config.num_vertices), np.float32),
                "labels": ((steps, config.num_vertices), np.uint8),
            }
            for name, (shape, dtype) in expected.items():
                array = getattr(self, name)()
                if array.shape != shape or array.dtype != dtype:
                    raise CacheError(f"{name}.npy is {array.dtype}{array.shape}, expected {dtype.__name__}{shape}")
            stats = self.stats()
            if stats["count"].shape != (steps, channels) or stats["label_counts"].shape != (
                steps,
                NUM_CLASSES,
            ):
                raise CacheError("stats.npz has the wrong shape")
            if meta["version"] != CACHE_VERSION or tuple(meta["variables"]) != config.variables:
                raise CacheError("written by another version or for other variables")
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from exc


def partial_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (sample, channel) count, mean and sum of squared deviations, ignoring NaN."""
    valid = ~np.isnan(values)
    count = valid.sum(-1)
    safe = np.where(valid, values, 0.0).astype(np.float64)
    mean = safe.sum(-1) / np.maximum(count, 1)
    m2 = (np.where(valid, values - mean[..., None], 0.0) ** 2).sum(-1)
    return count, mean, m2


def _time_slab(num_channels: int, shape: tuple[int, int]) -> int:
    return max(1, _SLAB_BYTES // (4 * num_channels * shape[0] * shape[1]))


def _write_entry(source: Path, config: PreprocessConfig, tmp: Path) -> list[str]:
    """Regrid one file into `tmp`; returns warnings for the parent process to show."""
    nan_sources = np.zeros(len(config.variables), dtype=np.int64)
    nan_vertices = np.zeros(len(config.variables), dtype=np.int64)
    with LatLonFile(source, config.variables, config.label_variable) as data:
        steps, channels, n = data.num_times, len(config.variables), config.num_vertices
        fields = np.lib.format.open_memmap(tmp / "fields.npy", "w+", np.float32, (steps, channels, n))
        labels = np.lib.format.open_memmap(tmp / "labels.npy", "w+", np.uint8, (steps, n))
        count, mean, m2 = (np.zeros((steps, channels)) for _ in range(3))
        label_counts = np.zeros((steps, NUM_CLASSES), dtype=np.int64)
        slab = _time_slab(channels, (data.lat.size, data.lon.size))
        for start in range(0, steps, slab):
            stop = min(steps, start + slab)
            ico, missing = data.read_vertices(config.level, config.method, start, stop)
            if config.nan_policy == "raise" and missing.any():
                bad = [v for v, k in zip(config.variables, missing, strict=True) if k]
                problem = f"{int(missing.sum())} missing or non-finite (NaN/inf/_FillValue) values"
                raise DataFileError(source, problem, ", ".join(bad))
            nan_sources += missing
            nan_vertices += np.isnan(ico).sum(axis=(0, 2))
            fields[start:stop] = ico
            count[start:stop], mean[start:stop], m2[start:stop] = partial_stats(ico)
            try:
                ico_labels = latlon_to_ico(data.read_labels(start, stop), data.lat, data.lon, config.level,
                                           config.label_method, True, *data.bounds)
            except ValueError as exc:
                if isinstance(exc, DataFileError):
                    raise
                raise DataFileError(source, f"grid does not cover the sphere ({exc})", config.label_variable) from exc
            labels[start:stop] = ico_labels
            label_counts[start:stop] = np.stack([(ico_labels == k).sum(-1) for k in range(NUM_CLASSES)], -1)
        fields.flush()
        labels.flush()
        del fields, labels
        times = data.times
    np.savez(tmp / "stats.npz", count=count, mean=mean, m2=m2, label_counts=label_counts)
    meta = {
        "version": CACHE_VERSION,
        "source": str(source.resolve()),
        "fingerprint": source_fingerprint(source),
        "num_times": steps,
        "times": times,
        "variables": list(config.variables),
        "level": config.level,
        "method": config.method,
        "label_method": config.label_method,
        "nan_source_points": dict(zip(config.variables, nan_sources.tolist(), strict=True)),
        "nan_vertices": dict(zip(config.variables, nan_vertices.tolist(), strict=True)),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return [
        f"{source}: variable {name!r} has {k} missing or non-finite (NaN/inf/_FillValue) points; regridding "
        f"skipped them, and the {v} vertices left without any valid neighbour are set to the training mean"
        for name, k, v in zip(config.variables, nan_sources, nan_vertices, strict=True)
        if k
    ]


def build_entry(source: Path, config: PreprocessConfig, root: Path) -> list[str]:
    """Build the entry of one source unless it exists; atomic, safe to run concurrently."""
    final = entry_path(root, config, source)
    if final.exists():
        return []
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        messages = _write_entry(Path(source), config, tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
        return messages
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove an entry: rename it out of sight first, so readers never see it half deleted."""
    trash = path.parent / f"{_TMP_PREFIX}trash-{uuid.uuid4().hex}"
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporaries of dead processes on this host (left by an interrupted run)."""
    if not folder.is_dir():
        return
    host = socket.gethostname()
    for tmp in folder.glob(f"{_TMP_PREFIX}*"):
        parts = tmp.name[len(_TMP_PREFIX) :].rsplit("-", 2)
        if tmp.name.startswith(f"{_TMP_PREFIX}trash-"):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where available: children need no re-import of torch; they open their own files."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


T = TypeVar("T")


def pooled_results(fn: Callable[..., T], jobs: Sequence[tuple], workers: int) -> Iterator[T]:
    """`fn(*job)` for every job, in a process pool when there are several workers and jobs (results
    in completion order), else in this process; the first failure cancels what has not started."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        pending = {pool.submit(fn, *job) for job in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                yield future.result()


def ensure_cache(
    sources: Sequence[Path],
    config: PreprocessConfig,
    root: str | Path,
    workers: int = 1,
    progress: bool = True,
    desc: str = "regridding to cache",
) -> list[CacheEntry]:
    """Entries for all sources, building missing ones and rebuilding unreadable ones.

    workers > 1 uses a process pool. The first bad file stops the run with its DataFileError;
    entries finished before it stay in the cache.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    folder = root / config.folder_name()
    _remove_stale_tmp(folder)
    todo = []
    for source in sources:
        path = entry_path(root, config, Path(source))
        if path.exists():
            try:
                CacheEntry(path).check(config)
                continue
            except CacheError as exc:
                warnings.warn(f"rebuilding unreadable cache entry for {source}: {exc}", RuntimeWarning, stacklevel=2)
                _discard(path)
        todo.append(Path(source))
    messages: list[str] = []
    with tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="file") as bar:
        for result in pooled_results(build_entry, [(source, config, root) for source in todo], workers):
            messages += result
            bar.update()
    for message in messages:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return [CacheEntry(entry_path(root, config, Path(s))) for s in sources]
