"""The vertex store: the one on-disk format of every cache entry, a zarr group.

Arrays (dimension names in the zarr metadata, so `xr.open_zarr(path)` shows a dataset):
`fields` float32 [time, channel, vertex], `labels` uint8 [time, vertex], the `time` coordinate
(seconds since 1970, NaN when unknown), `vertex_lat`/`vertex_lon` in degrees, and per-step partial
statistics `stats_count`, `stats_mean`, `stats_m2` [time, channel] and `label_counts` [time, class]
(per step rather than per chunk, so the normalisation of any time subset needs no pass over the
data). Attributes: level, variables, method, label method, CACHE_VERSION, kind and source.

A store is written region by region (a region is `region_steps` consecutive time steps; each time
step is its own zarr chunk, so regions never share a chunk and can be written by independent
processes). A region counts only once its marker file `.region-NNNNNN` exists, written
after its arrays: a build killed at any point resumes with the regions without a marker, and a
reader never sees a half-written region because it opens only stores whose `.complete` marker
exists (markers are hidden files, which zarr and xarray ignore). Steps are stored uncompressed:
reading one sample costs one small file read, like a memory map.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BytesCodec

from datamodules.cache.version import CACHE_VERSION
from datamodules.io.archive import consolidate
from datamodules.io.atomic import atomic_path
from icolightning.classes import NUM_CLASSES
from icolightning.errors import DataError
from icolightning.grid import IcoGrid

_COMPLETE = ".complete"
_REGION = ".region-"
_STAT_NAMES = ("stats_count", "stats_mean", "stats_m2")


class CacheError(DataError, RuntimeError):
    """An existing cache entry cannot be used (truncated, corrupt, or from another config)."""


class TruncatedStoreError(CacheError):
    """A completed store with chunk files cut short; a build rewrites only their regions."""


def partial_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (sample, channel) count, mean and sum of squared deviations, ignoring NaN."""
    valid = ~np.isnan(values)
    count = valid.sum(-1)
    safe = np.where(valid, values, 0.0).astype(np.float64)
    mean = safe.sum(-1) / np.maximum(count, 1)
    m2 = (np.where(valid, values - mean[..., None], 0.0) ** 2).sum(-1)
    return count, mean, m2


def label_counts(labels: np.ndarray) -> np.ndarray:
    """Per-step class histogram int64 [t, NUM_CLASSES] of uint8 labels [t, N]."""
    return np.stack([np.bincount(row, minlength=NUM_CLASSES)[:NUM_CLASSES] for row in labels]).astype(np.int64)


def seconds_since_epoch(times: Sequence[str | None]) -> np.ndarray:
    """ISO stamps (or None) as float64 seconds since 1970-01-01 (NaN when unknown)."""
    stamps = np.array([np.datetime64(t, "s") if t else np.datetime64("NaT") for t in times], dtype="datetime64[s]")
    seconds = stamps.astype(np.int64).astype(np.float64)
    seconds[np.isnat(stamps)] = np.nan
    return seconds


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive file lock next to `path` (several DDP ranks or nodes building one store)."""
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StepArray:
    """A [time, ...] zarr array whose single steps are read straight from their chunk file.

    Each step is one uncompressed chunk (raw little-endian values, the zarr v3 `bytes` codec), so
    reading it is one `np.fromfile`, about 8x faster than going through zarr's async machinery; a
    step zarr skipped because it equals the fill value reads as the fill value, and a chunk file
    of the wrong size (truncated after the store was completed) is a `CacheError` naming the step.
    Anything but a single integer index (slices, `np.asarray`) goes through zarr.
    """

    def __init__(self, array: zarr.Array, folder: Path) -> None:
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        self._folder = folder
        self._chunk = (os.fspath(folder / "c") + os.sep, os.sep + os.sep.join(["0"] * (len(array.shape) - 1)))
        self._fill = array.metadata.fill_value
        self._size = math.prod(self.shape[1:])
        codecs = array.metadata.codecs
        endian = getattr(codecs[0], "endian", "?") if len(codecs) == 1 else "?"
        self._raw = isinstance(codecs[0], BytesCodec) and (endian is None or endian.value == "little")

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.array[...], dtype=dtype)

    def truncated_steps(self) -> list[int]:
        """Steps whose chunk file exists with the wrong size (one `stat` per step, no reads)."""
        if not self._raw:
            return []
        expected = self._size * self.dtype.itemsize
        bad = []
        for step in range(self.shape[0]):
            try:
                if os.stat(self.chunk_path(step)).st_size != expected:
                    bad.append(step)
            except FileNotFoundError:  # a chunk equal to the fill value is not written
                pass
        return bad

    def chunk_path(self, step: int) -> str:
        """The file holding time step `step` (a plain string: this runs once per sample)."""
        head, tail = self._chunk
        return f"{head}{step}{tail}"

    def __getitem__(self, index: object) -> np.ndarray:
        if not self._raw or not isinstance(index, int | np.integer):
            return self.array[index]
        step = int(index) + (self.shape[0] if index < 0 else 0)
        if not 0 <= step < self.shape[0]:
            raise IndexError(f"{self._folder}: step {index} of {self.shape[0]}")
        try:
            values = np.fromfile(self.chunk_path(step), dtype=self.dtype.newbyteorder("<"))
        except FileNotFoundError:
            return np.full(self.shape[1:], self._fill, dtype=self.dtype)
        if values.size != self._size:
            raise CacheError(f"{self._folder.parent}: variable {self._folder.name!r}, time step {step}: chunk "
                             f"holds {values.size} of {self._size} values (truncated; delete the store to rebuild)")
        return values.astype(self.dtype, copy=False).reshape(self.shape[1:])


class VertexStore:
    """One vertex store on disk (see the module docstring); arrays open lazily, read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ reading
    def _group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.path, mode=mode)

    @property
    def meta(self) -> dict:
        return dict(self._group().attrs)

    @property
    def complete(self) -> bool:
        return (self.path / _COMPLETE).is_file()

    def fields(self) -> StepArray:
        return StepArray(self._group()["fields"], self.path / "fields")

    def labels(self) -> StepArray:
        return StepArray(self._group()["labels"], self.path / "labels")

    def stats(self) -> dict[str, np.ndarray]:
        """Per-step partial statistics under the names `Normalization.from_partials` takes."""
        group = self._group()
        stats = {name.removeprefix("stats_"): group[name][:] for name in _STAT_NAMES}
        return {**stats, "label_counts": group["label_counts"][:]}

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(cls, path: str | Path, *, level: int, steps: int, channels: int, region_steps: int,
               attrs: dict, times: Sequence[str | None] | None = None) -> VertexStore:
        """A new empty store at `path` (replacing whatever is there); call under `build_lock`."""
        path = Path(path)
        shutil.rmtree(path, ignore_errors=True)
        grid = IcoGrid(level)
        n = grid.num_vertices
        group = zarr.open_group(path, mode="w")

        def array(name: str, shape: tuple, chunks: tuple, dtype: str, dims: tuple) -> zarr.Array:
            return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=None,
                                      fill_value=0, dimension_names=dims)

        array("fields", (steps, channels, n), (1, channels, n), "float32", ("time", "channel", "vertex"))
        array("labels", (steps, n), (1, n), "uint8", ("time", "vertex"))
        for name in _STAT_NAMES:
            array(name, (steps, channels), (region_steps, channels), "float64", ("time", "channel"))
        array("label_counts", (steps, NUM_CLASSES), (region_steps, NUM_CLASSES), "int64", ("time", "class"))
        times = list(times) if times is not None else [None] * steps
        time = array("time", (steps,), (max(steps, 1),), "float64", ("time",))
        time[:] = seconds_since_epoch(times)
        time.attrs.update({"units": "seconds since 1970-01-01T00:00:00", "calendar": "proleptic_gregorian"})
        for name, column in (("vertex_lat", 0), ("vertex_lon", 1)):
            coord = array(name, (n,), (n,), "float64", ("vertex",))
            coord[:] = grid.latlon[:, column]
            coord.attrs["units"] = "degrees_north" if column == 0 else "degrees_east"
        group.attrs.update({**attrs, "version": CACHE_VERSION, "level": level, "num_times": steps,
                            "region_steps": region_steps, "times": times,
                            "coordinates": "time vertex_lat vertex_lon"})
        return cls(path)

    @property
    def num_regions(self) -> int:
        meta = self.meta
        return -(-meta["num_times"] // meta["region_steps"])

    def region_bounds(self, region: int) -> tuple[int, int]:
        meta = self.meta
        start = region * meta["region_steps"]
        return start, min(meta["num_times"], start + meta["region_steps"])

    def done_regions(self) -> set[int]:
        names = (p.name.removeprefix(_REGION) for p in self.path.glob(f"{_REGION}*"))
        return {int(name) for name in names if name.isdigit()}

    def write_region(self, region: int, fields: np.ndarray, labels: np.ndarray) -> None:
        """Write the steps of one region and their statistics; the marker last."""
        start, stop = self.region_bounds(region)
        if fields.shape[0] != stop - start or labels.shape[0] != stop - start:
            raise ValueError(f"region {region} holds steps {start}..{stop - 1}, got {fields.shape[0]} steps")
        group = self._group("r+")
        group["fields"][start:stop] = fields
        group["labels"][start:stop] = labels
        for name, values in zip(_STAT_NAMES, partial_stats(fields), strict=True):
            group[name][start:stop] = values
        group["label_counts"][start:stop] = label_counts(labels)
        with atomic_path(self.path / f"{_REGION}{region:06d}") as tmp:
            tmp.write_text(json.dumps({"start": start, "stop": stop}))

    def finish(self) -> None:
        """Mark the store complete (every region written) and consolidate its metadata for xarray."""
        missing = set(range(self.num_regions)) - self.done_regions()
        if missing:
            raise CacheError(f"{self.path}: regions {sorted(missing)[:5]} are not written")
        consolidate(self.path)
        with atomic_path(self.path / _COMPLETE) as tmp:
            tmp.write_text("")

    def truncated_regions(self) -> dict[int, list[str]]:
        """{region: ["fields step 12", ...]} of the chunk files of the wrong size (cut short after the
        store was completed: a full disk, a copy that stopped)."""
        steps = self.meta["region_steps"]
        found: dict[int, list[str]] = {}
        for name, array in (("fields", self.fields()), ("labels", self.labels())):
            for step in array.truncated_steps():
                found.setdefault(step // steps, []).append(f"{name} step {step}")
        return found

    def reopen_regions(self, regions: Sequence[int]) -> None:
        """Take back the completion and the markers of `regions`, so a build rewrites only them."""
        (self.path / _COMPLETE).unlink(missing_ok=True)
        for region in regions:
            (self.path / f"{_REGION}{region:06d}").unlink(missing_ok=True)

    def check(self, *, steps: int | None, channels: int, level: int) -> None:
        """Raise CacheError unless the store is complete, of the right version, shape and dtypes, and
        every chunk file has its size."""
        try:
            if not self.complete:
                raise CacheError(f"{self.path}: not complete")
            meta = self.meta
            steps = meta["num_times"] if steps is None else steps
            n = IcoGrid(level).num_vertices
            fields, labels = self.fields(), self.labels()
            if fields.shape != (steps, channels, n) or fields.dtype != np.float32:
                raise CacheError(f"fields are {fields.dtype}{fields.shape}, expected float32{(steps, channels, n)}")
            if labels.shape != (steps, n) or labels.dtype != np.uint8:
                raise CacheError(f"labels are {labels.dtype}{labels.shape}, expected uint8{(steps, n)}")
            if meta["version"] != CACHE_VERSION:
                raise CacheError(f"written by cache version {meta['version']}, this is {CACHE_VERSION}")
            truncated = [where for found in self.truncated_regions().values() for where in found]
            if truncated:
                raise TruncatedStoreError(f"{self.path}: truncated chunk files: {', '.join(truncated[:5])}"
                                          + (f" and {len(truncated) - 5} more" if len(truncated) > 5 else ""))
        except CacheError:
            raise
        except Exception as exc:
            raise CacheError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from exc
