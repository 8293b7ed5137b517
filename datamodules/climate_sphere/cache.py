"""One consolidated, memory-mapped cache per split of the climate_sphere_l5 files.

62 738 small npz files become, per split, `fields.npy` (float32 [S, 16, N]), `labels.npy`
(uint8 [S, N]) and `stats.npz` (per-sample partial statistics, see `datamodules.cache.entries`) on
`IcoGrid(level)`, in split-list order. The folder name hashes the split list's files (path, size,
mtime), the level and CACHE_VERSION, so other or changed files get a new cache.

Building happens in a deterministic hidden folder, in chunks of files written by a process pool:
each finished chunk leaves a small stats file (written atomically after its rows are flushed), so
an interrupted build resumes with the missing chunks; the finished folder is renamed into place
in one step. A file lock serialises builders of the same split (several DDP ranks or nodes).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datamodules.cache.entries import CachedArrays, partial_stats, pooled_results, source_fingerprint
from datamodules.climate_sphere.files import CHANNELS, check_vertex_order, read_sample, sphere_to_ico
from datamodules.io.atomic import atomic_path
from icolightning.classes import NUM_CLASSES
from icolightning.grid import IcoGrid

CACHE_VERSION = 1
CHUNK_FILES = 64
_BUILDING = ".building-"


class SplitCache(CachedArrays):
    """The consolidated cache of one split (every sample of the split in one folder)."""


def cache_key(files: Sequence[Path], level: int, check_order: bool) -> str:
    """Hash of everything that changes the content: the files (path, size, mtime), level, version."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}|level{level}|check{int(check_order)}".encode())
    for path in files:
        digest.update(source_fingerprint(Path(path)).encode())
    return digest.hexdigest()[:16]


def _chunk_stats_path(building: Path, chunk: int) -> Path:
    return building / "chunks" / f"{chunk:06d}.npz"


def _write_chunk(files: Sequence[Path], start: int, chunk: int, building: Path, level: int,
                 check_order: bool) -> int:
    """Map files[start:start+CHUNK_FILES] into the building arrays; their stats file marks them done."""
    mapping = sphere_to_ico(level)
    fields = np.load(building / "fields.npy", mmap_mode="r+")
    labels = np.load(building / "labels.npy", mmap_mode="r+")
    rows = range(start, min(start + CHUNK_FILES, len(files)))
    count, mean, m2 = (np.zeros((len(rows), len(CHANNELS))) for _ in range(3))
    label_counts = np.zeros((len(rows), NUM_CLASSES), dtype=np.int64)
    for i, row in enumerate(rows):
        data, label = read_sample(files[row])
        if check_order:
            check_vertex_order(data, files[row])
        fields[row], labels[row] = mapping.apply(data, label)
        count[i], mean[i], m2[i] = partial_stats(fields[row])
        label_counts[i] = np.bincount(labels[row], minlength=NUM_CLASSES)[:NUM_CLASSES]
    fields.flush()
    labels.flush()
    del fields, labels
    with atomic_path(_chunk_stats_path(building, chunk)) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, count=count, mean=mean, m2=m2, label_counts=label_counts)
    return len(rows)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_building(building: Path, samples: int, level: int) -> None:
    """Create the building folder's arrays unless a resumable build with the right shapes is there."""
    n = IcoGrid(level).num_vertices
    shapes = {"fields.npy": ((samples, len(CHANNELS), n), np.float32), "labels.npy": ((samples, n), np.uint8)}
    try:
        ok = all(np.load(building / name, mmap_mode="r").shape == shape for name, (shape, _) in shapes.items())
    except (OSError, ValueError):
        ok = False
    if not ok:
        shutil.rmtree(building, ignore_errors=True)
        (building / "chunks").mkdir(parents=True)
        for name, (shape, dtype) in shapes.items():
            np.lib.format.open_memmap(building / name, "w+", dtype, shape).flush()


def _finish(building: Path, final: Path, files: Sequence[Path], chunks: int, split: str, level: int) -> None:
    parts = []
    for chunk in range(chunks):
        with np.load(_chunk_stats_path(building, chunk)) as data:
            parts.append({k: data[k] for k in data.files})
    np.savez(building / "stats.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    meta = {"version": CACHE_VERSION, "split": split, "level": level, "channels": list(CHANNELS),
            "num_samples": len(files), "files": [Path(f).name for f in files]}
    (building / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(building / "chunks")
    building.rename(final)


def ensure_split_cache(files: Sequence[Path], split: str, root: str | Path, level: int = 5, workers: int = 1,
                       progress: bool = True, check_order: bool = True) -> SplitCache:
    """The cache of one split, building (or resuming) it first when needed."""
    from tqdm.auto import tqdm

    files = [Path(f) for f in files]
    folder = Path(root) / f"climate_sphere_l5-level{level}"
    name = f"{split}-{cache_key(files, level, check_order)}"
    final, building = folder / name, folder / f"{_BUILDING}{name}"
    if final.is_dir():
        return SplitCache(final)
    with _locked(folder / f".{name}.lock"):
        if final.is_dir():
            return SplitCache(final)
        _open_building(building, len(files), level)
        sphere_to_ico(level)  # built once here, inherited by forked workers
        chunks = -(-len(files) // CHUNK_FILES)
        todo = [c for c in range(chunks) if not _chunk_stats_path(building, c).is_file()]
        done = len(files) - sum(min(CHUNK_FILES, len(files) - c * CHUNK_FILES) for c in todo)
        args = (building, level, check_order)
        with tqdm(total=len(files), initial=done, desc=f"caching {split} on level {level}", unit="file",
                  disable=not progress) as bar:
            for written in pooled_results(_write_chunk, [(files, c * CHUNK_FILES, c, *args) for c in todo], workers):
                bar.update(written)
        _finish(building, final, files, chunks, split, level)
    return SplitCache(final)
