"""Peak memory of icolightning-regrid and of the predict reader/writer does not grow with the number
of time steps: tracemalloc (which sees numpy's buffers) on a 4-step and a 64-step file."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from checkpoints import stats

from datamodules.io.convert import regrid_netcdf
from datamodules.io.prediction import PredictionSource, PredictionWriter

LEVEL = 4  # 2 562 vertices: a whole file's vertex output (64 x 4 x 2 562 floats) dwarfs one step's work


def _file(path: Path, steps: int) -> Path:
    lat, lon = np.linspace(-90, 90, 19), np.arange(0, 360, 10.0)
    rng = np.random.default_rng(steps)
    fields = {v: (("time", "lat", "lon"), rng.standard_normal((steps, 19, 36)).astype(np.float32))
              for v in ("TMQ", "U850", "V850", "PSL")}
    xr.Dataset(fields, coords={"time": np.arange(steps), "lat": lat, "lon": lon}).to_netcdf(path)
    return path


def _peak(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _predict(source_path: Path, out: Path) -> None:
    with PredictionSource(source_path, stats(LEVEL)) as source, PredictionWriter(out, source.grid) as writer:
        for start, inputs in source.slabs(4):
            probs = torch.softmax(inputs.x[:, :3], dim=1)
            writer.write(start, probs.argmax(1), probs)


def test_regrid_and_predict_memory_does_not_grow_with_time_steps(tmp_path):
    short, long = _file(tmp_path / "short.nc", 4), _file(tmp_path / "long.nc", 64)
    regrid_netcdf(short, tmp_path / "warm.nc", LEVEL, progress=False)  # regrid matrices are cached once
    peaks = {n: _peak(lambda n=n, f=f: regrid_netcdf(f, tmp_path / f"{n}_ico.nc", LEVEL, progress=False))
             for n, f in (("short", short), ("long", long))}
    whole_output = 64 * 4 * 2562 * 4
    assert peaks["long"] < 1.5 * peaks["short"] + 200_000, peaks
    assert peaks["long"] < whole_output / 2, peaks
    with xr.open_dataset(tmp_path / "long_ico.nc") as out, xr.open_dataset(long) as src:
        assert out.TMQ.shape == (64, 2562)
        assert np.allclose(out.TMQ.values.mean(1), src.TMQ.values.mean((1, 2)), atol=0.3)  # every step filled
    _predict(short, tmp_path / "warm_pred.nc")
    peaks = {n: _peak(lambda n=n, f=f: _predict(f, tmp_path / f"{n}_pred.nc")) for n, f in (("short", short),
                                                                                              ("long", long))}
    assert peaks["long"] < 1.5 * peaks["short"] + 200_000, peaks
    with xr.open_dataset(tmp_path / "long_pred.nc") as out:
        assert out.PROBABILITIES.shape == (64, 3, 19, 36)
        np.testing.assert_allclose(out.PROBABILITIES.values.sum(1), 1.0, atol=1e-5)
