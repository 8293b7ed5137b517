"""Where the regions of a cache build run: in this process, a local process pool, or Dask.

`Scheduler.kind`: "none" (in this process), "processes" (a fork pool of `workers` processes, the
single-node default), "local" (`distributed.LocalCluster` with `workers` worker processes),
"address" (an existing Dask scheduler at `address`) or "slurm" (`dask_jobqueue.SLURMCluster` with
`slurm` holding cores, memory, walltime, ... and `jobs` jobs). Every job is a module-level function
and small arguments (paths and numbers): each worker opens its own inputs and writes its own region
of the store, so no data passes through the client. Dask reruns the tasks of a worker that dies.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from icolightning.errors import UsageError

KINDS = ("none", "processes", "local", "address", "slurm")
T = TypeVar("T")


@dataclass(frozen=True)
class Scheduler:
    """How to run a build (see the module docstring); `from_config` reads the `dask` config group."""

    kind: str = "processes"
    workers: int = 1
    address: str | None = None
    jobs: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"scheduler kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "address" and not self.address:
            raise UsageError("scheduler kind 'address' needs an address (e.g. tcp://host:8786)")

    @classmethod
    def from_config(cls, config: Scheduler | dict | str | None, workers: int = 1) -> Scheduler:
        if isinstance(config, Scheduler):
            return config
        if config is None:
            return cls("processes", workers)
        if isinstance(config, str):
            return cls("address", workers, address=config) if "://" in config else cls(config, workers)
        values = dict(config)
        values.setdefault("workers", workers)
        values["slurm"] = dict(values.get("slurm") or {})
        return cls(**values)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where available: children need no re-import of torch; they open their own files."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


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


def _require_dask(kind: str) -> None:
    try:
        import distributed  # noqa: F401
        if kind == "slurm":
            import dask_jobqueue  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"scheduler kind {kind!r} needs Dask: pip install 'icolightning[dask]' ({exc})") from exc


def slurm_cluster(scheduler: Scheduler) -> Any:
    """The `SLURMCluster` of a "slurm" scheduler (its `job_script()` shows what would be submitted)."""
    _require_dask("slurm")
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**scheduler.slurm)


@contextmanager
def dask_client(scheduler: Scheduler) -> Iterator[Any]:
    """A `distributed.Client` for a Dask scheduler kind; clusters it starts are closed on exit."""
    _require_dask(scheduler.kind)
    from distributed import Client, LocalCluster

    if scheduler.kind == "address":
        with Client(scheduler.address) as client:
            yield client
        return
    if scheduler.kind == "local":
        cluster = LocalCluster(n_workers=scheduler.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    else:
        cluster = slurm_cluster(scheduler)
        cluster.scale(jobs=scheduler.jobs)
    with cluster, Client(cluster) as client:
        yield client


def run_jobs(fn: Callable[..., T], jobs: Sequence[tuple], scheduler: Scheduler) -> Iterator[T]:
    """`fn(*job)` for every job on `scheduler`, results in completion order; the first failure raises."""
    if scheduler.kind == "none":
        yield from pooled_results(fn, jobs, 1)
        return
    if scheduler.kind == "processes":
        yield from pooled_results(fn, jobs, scheduler.workers)
        return
    if not jobs:
        return
    from distributed import as_completed

    with dask_client(scheduler) as client:
        futures = client.map(fn, *zip(*jobs, strict=True), pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)
