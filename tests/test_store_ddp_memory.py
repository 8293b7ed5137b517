"""Two DDP ranks (gloo, freshly spawned processes) read vertex stores lazily: a rank's peak RSS is
the same after reading its half of a 256-step store as after a 16-step one, far below the store.

Reads are lazy by construction (one chunk file per sample, nothing loaded on open); this measures
it. Each rank reads the short store, then the long one, through `ClimateDataset` and the
project's rank split (`evaluation_sampler` over the gloo group), and reports `ru_maxrss` before,
between and after. An eager read (`np.asarray` of the store on open) adds the whole long store,
168 MB, to every rank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_runs import free_port
from torch.utils.data import DataLoader

from datamodules.cache.store import VertexStore
from datamodules.climatenet.datamodule import ClimateDataset
from datamodules.normalization import Normalization
from datamodules.samplers import evaluation_sampler

LEVEL, CHANNELS, VERTICES = 5, 16, 10242
SHORT, LONG = 32, 256
STEP_BYTES = VERTICES * (CHANNELS * 4 + 1)  # fields float32 + labels uint8
# Measured (2 ranks, batch 8 of 5.2 MB, shared 2-core machine, 4 runs = 8 rank-runs): start-up
# (torch, Lightning, this module) peaks at 490 MB; the short store, the first reads included, adds
# 26.6-27.9 MB; the long one then adds 0.0-15.6 MB (0 to 3 batches of allocator slack), against
# the 84 MB share that an eager rank would hold on top. The bounds leave room for that noise.
MAX_GROWTH_MB = 40.0
MAX_LONG_EXTRA_MB = 24.0


def _write_store(path: Path, steps: int) -> VertexStore:
    """A complete store of random fields and labels (regions of 16 steps)."""
    store = VertexStore.create(path, level=LEVEL, steps=steps, channels=CHANNELS, region_steps=16,
                               attrs={"kind": "latlon", "variables": [f"v{c}" for c in range(CHANNELS)]})
    rng = np.random.default_rng(steps)
    for region in range(store.num_regions):
        start, stop = store.region_bounds(region)
        store.write_region(region, rng.standard_normal((stop - start, CHANNELS, VERTICES), dtype=np.float32),
                           rng.integers(0, 3, (stop - start, VERTICES), dtype=np.uint8))
    store.finish()
    return store


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: unlike `ru_maxrss` it starts afresh at exec, so a spawned rank
    does not inherit the launching pytest's peak)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB


def _read_share(path: str, norm: Normalization) -> dict:
    """Every sample of this rank's share of the store at `path`: count, indices and a checksum."""
    store = VertexStore(path)
    dataset = ClimateDataset([store], [(0, t) for t in range(store.meta["num_times"])], norm)
    sampler = evaluation_sampler(dataset)
    total = 0.0
    for x, y in DataLoader(dataset, batch_size=8, sampler=sampler):
        total += float(x.sum(dtype=torch.float64)) + float(y.sum())
    return {"indices": list(sampler), "checksum": total, "peak_mb": _peak_mb()}


def _rank(rank: int, world: int, port: int, paths: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        norm = Normalization(tuple(f"v{c}" for c in range(CHANNELS)), (0.0,) * CHANNELS, (1.0,) * CHANNELS,
                             (0.5, 0.25, 0.25), 1, LEVEL, "bilinear")
        start = _peak_mb()
        reads = [_read_share(path, norm) for path in paths]
        Path(out, f"rank{rank}.json").write_text(json.dumps({"start_mb": start, "reads": reads}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_peak_rss_does_not_grow_with_the_store(tmp_path) -> None:
    stores = [_write_store(tmp_path / f"{steps}.zarr", steps) for steps in (SHORT, LONG)]
    mp.spawn(_rank, args=(2, free_port(), [str(s.path) for s in stores], str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for store, steps, reads in zip(stores, (SHORT, LONG), zip(*(r["reads"] for r in ranks), strict=True), strict=True):
        assert sorted(reads[0]["indices"] + reads[1]["indices"]) == list(range(steps))  # each sample once
        assert len(reads[0]["indices"]) == steps // 2
        expected = np.asarray(store.fields(), dtype=np.float64).sum() + np.asarray(store.labels()).sum()
        assert reads[0]["checksum"] + reads[1]["checksum"] == pytest.approx(expected, rel=1e-9)
    long_mb = LONG * STEP_BYTES / 2**20
    assert long_mb > 160
    for rank in ranks:
        short, long = (read["peak_mb"] for read in rank["reads"])
        assert short - rank["start_mb"] < MAX_GROWTH_MB, rank
        assert long - short < MAX_LONG_EXTRA_MB, f"the {long_mb:.0f} MB store grew a rank's peak: {rank}"
