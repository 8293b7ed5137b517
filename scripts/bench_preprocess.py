"""Preprocessing throughput: a synthetic ERA5-like zarr archive into a vertex store, in this process
and on a Dask `LocalCluster` of 1 and 2 worker processes, with the same archive and config.

Each cluster is started and warmed first (a build of a short archive on the same grid, so every
worker has imported torch and built its regridding matrix), then the timed build runs on the warm
cluster through its scheduler address: the figure is regridding throughput, not start-up. Cluster
start-up is printed separately. The scale model in docs/scale-data.md uses these figures.

    python scripts/bench_preprocess.py                       # 384 x 576, 16 variables, 64 steps, level 5
    python scripts/bench_preprocess.py --nlat 721 --nlon 1440 --steps 32
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from datamodules.cache.entries import PreprocessConfig, write_vertex_store
from datamodules.climatenet.datamodule import ALL16
from datamodules.climatenet.synthetic_archive import generate_archive
from icolightning.classes import LABEL_VARIABLE


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed_build(archive: Path, out: Path, config: PreprocessConfig, scheduler: object) -> float:
    start = time.perf_counter()
    write_vertex_store(archive, out, config, scheduler, progress=False)
    return time.perf_counter() - start


def on_cluster(workers: int, warm: Path, archive: Path, root: Path, config: PreprocessConfig) -> tuple[float, float]:
    """(start-up + warm-up seconds, timed build seconds) on a fresh LocalCluster of `workers`."""
    from distributed import LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        timed_build(warm, root / f"warm{workers}.zarr", config, cluster.scheduler_address)
        startup = time.perf_counter() - start
        return startup, timed_build(archive, root / f"store{workers}.zarr", config, cluster.scheduler_address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nlat", type=int, default=384)
    parser.add_argument("--nlon", type=int, default=576)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--method", default="bilinear")
    args = parser.parse_args()
    config = PreprocessConfig(args.level, ALL16, args.method, LABEL_VARIABLE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = generate_archive(root / "archive.zarr", args.steps, args.nlat, args.nlon, ALL16)
        warm = generate_archive(root / "warm.zarr", 8, args.nlat, args.nlon, ALL16)
        print(f"archive {args.steps} steps x {len(ALL16)} variables x {args.nlat} x {args.nlon} -> level "
              f"{args.level} ({args.method}); load average {os.getloadavg()[0]:.2f}")
        timed_build(warm, root / "warm0.zarr", config, "none")
        rows = [("in-process", 1, 0.0, timed_build(archive, root / "store0.zarr", config, "none"))]
        for workers in (1, 2):
            rows.append(("LocalCluster", workers, *on_cluster(workers, warm, archive, root, config)))
        source = folder_bytes(archive) / args.steps
        store = folder_bytes(root / "store0.zarr") / args.steps
        print(f"bytes per step: source {source / 1e6:.2f} MB, store {store / 1e3:.1f} kB")
        print("| engine | workers | start-up + warm-up s | build s | steps/s | s per step per worker | speed-up |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = rows[1][3]
        for engine, workers, startup, seconds in rows:
            print(f"| {engine} | {workers} | {startup:.1f} | {seconds:.2f} | {args.steps / seconds:.1f} | "
                  f"{seconds * workers / args.steps:.3f} | {base / seconds:.2f} |")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
