"""Building vertex stores: open (resume) or create each one, then write their missing regions.

The caller passes the region writer (a module-level function `write(store_path, region, *args)`
that reads its own inputs, so the cache never imports a dataset's file format) and a
`Scheduler`; regions of all stores go to one run, so a Dask cluster is started once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from datamodules.cache.engine import Scheduler, run_jobs
from datamodules.cache.store import CacheError, TruncatedStoreError, VertexStore
from datamodules.cache.version import CACHE_VERSION


def open_or_create(path: Path, create: dict[str, Any]) -> VertexStore:
    """The store at `path` if it is complete or a resumable build of the same content, else a new one.

    `create` holds `VertexStore.create`'s keyword arguments; a partial store is resumed only when its
    version, shape and attributes equal them. Call under `build_lock`.
    """
    store = VertexStore(path)
    if path.exists():
        try:
            if store.complete:
                try:
                    store.check(steps=create["steps"], channels=create["channels"], level=create["level"])
                except TruncatedStoreError as exc:
                    warnings.warn(f"{exc}; rewriting their regions", RuntimeWarning, stacklevel=3)
                    store.reopen_regions(sorted(store.truncated_regions()))
                return store
            meta = store.meta
            same = {"version": CACHE_VERSION, "num_times": create["steps"], "level": create["level"],
                    "region_steps": create["region_steps"], **create["attrs"]}
            if all(meta.get(k) == _plain(v) for k, v in same.items()):
                return store
        except CacheError as exc:
            warnings.warn(f"rebuilding unreadable cache entry {path}: {exc}", RuntimeWarning, stacklevel=3)
        except Exception:  # not a store at all (e.g. interrupted before its metadata was written)
            pass
    return VertexStore.create(path, **create)


def _plain(value: Any) -> Any:
    """What a value reads back as from JSON attributes (tuples become lists)."""
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def fill_stores(stores: Sequence[tuple[VertexStore, tuple]], write: Callable[..., Any], scheduler: Scheduler,
                progress: bool = True, desc: str = "building vertex store") -> list[Any]:
    """Write every missing region of every incomplete store with `write(path, region, *args)` on
    `scheduler` (a progress bar over regions), then mark the stores complete; returns the results."""
    from tqdm.auto import tqdm

    jobs, total = [], 0
    for store, args in stores:
        if store.complete:
            continue
        total += store.num_regions
        jobs += [(str(store.path), r, *args) for r in sorted(set(range(store.num_regions)) - store.done_regions())]
    results = []
    bar = tqdm(total=total, initial=total - len(jobs), desc=desc, unit="region", disable=not progress or not jobs)
    with bar:
        for result in run_jobs(write, jobs, scheduler):
            results.append(result)
            bar.update()
    for store, _ in stores:
        if not store.complete:
            store.finish()
    return results
