"""The cache of the climate_sphere_l5 files: one vertex store per split (the npz kind of entry).

62 738 small npz files become, per split, one `VertexStore` (`datamodules.cache.store`: fields
float32 [S, 16, N], labels uint8 [S, N], per-sample partial statistics) on `IcoGrid(level)`, in
split-list order. The store name hashes the split list's files (path, size, mtime), the level,
the order check and the one CACHE_VERSION, so other or changed files get a new cache.

The store is written in regions of CHUNK_FILES files (one job each, on a process pool or Dask):
a finished region leaves its marker, so an interrupted build resumes with the missing regions,
and readers open only complete stores. A file lock serialises builders of one split (DDP ranks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.cache.build import fill_stores, open_or_create
from datamodules.cache.engine import Scheduler
from datamodules.cache.entries import source_fingerprint
from datamodules.cache.store import VertexStore, build_lock
from datamodules.cache.version import CACHE_VERSION
from datamodules.climate_sphere.files import CHANNELS, check_vertex_order, read_sample, sphere_to_ico

CHUNK_FILES = 64


class SplitCache(VertexStore):
    """The vertex store of one split (every sample of the split, in split-list order)."""


def cache_key(files: Sequence[Path], level: int, check_order: bool) -> str:
    """Hash of everything that changes the content: the files (path, size, mtime), level, version."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}|level{level}|check{int(check_order)}".encode())
    for path in files:
        digest.update(source_fingerprint(Path(path)).encode())
    return digest.hexdigest()[:16]


def _write_chunk(files: Sequence[Path], start: int, chunk: int, store_path: str, level: int,
                 check_order: bool) -> int:
    """Map the files of one region (files[start:start+region_steps]) into the store."""
    store = VertexStore(store_path)
    stop = store.region_bounds(chunk)[1]
    mapping = sphere_to_ico(level)
    fields, labels = [], []
    for path in files[start:stop]:
        data, label = read_sample(path)
        if check_order:
            check_vertex_order(data, path)
        row_fields, row_labels = mapping.apply(data, label)
        fields.append(row_fields)
        labels.append(row_labels)
    store.write_region(chunk, np.stack(fields), np.stack(labels))
    return stop - start


def _write_region(store_path: str, region: int, files: Sequence[Path], level: int, check_order: bool) -> int:
    start = VertexStore(store_path).region_bounds(region)[0]
    return _write_chunk(files, start, region, store_path, level, check_order)


def ensure_split_cache(files: Sequence[Path], split: str, root: str | Path, level: int = 5, workers: int = 1,
                       progress: bool = True, check_order: bool = True,
                       scheduler: Scheduler | dict | str | None = None) -> SplitCache:
    """The cache of one split, building (or resuming) it first when needed."""
    files = [Path(f) for f in files]
    folder = Path(root) / f"climate_sphere_l5-level{level}"
    path = folder / f"{split}-{cache_key(files, level, check_order)}.zarr"
    folder.mkdir(parents=True, exist_ok=True)
    with build_lock(path):
        attrs = {"kind": "npz", "split": split, "variables": list(CHANNELS), "method": "ugscnn-barycentric",
                 "files": [f.name for f in files]}
        store = open_or_create(path, {"level": level, "steps": len(files), "channels": len(CHANNELS),
                                      "region_steps": CHUNK_FILES, "attrs": attrs})
        if not store.complete:
            sphere_to_ico(level)  # built once here, inherited by forked workers
            engine = Scheduler.from_config(scheduler, workers)
            fill_stores([(store, (files, level, check_order))], _write_region, engine, progress,
                        f"caching {split} on level {level}")
    return SplitCache(path)
