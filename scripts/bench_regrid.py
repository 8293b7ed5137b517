"""Benchmark the climate pipeline against DESIGN §7.

1. One ClimateNet-size synthetic file (16 x 768 x 1152 float32) to level 5: reading the 16
   variables alone vs reading + regridding vs xarray's `.interp` on the same vertex points.
   Targets: read+regrid <= 1.5x read; regridding >= 20x faster than `.interp`; conservative
   regridding within 2x the bilinear time (both the cache builder's read+regrid path and the
   regridding alone are printed; the one-time matrix builds too, and the exact conservative
   weights of a 0.25-degree grid to level 6). The conservative/bilinear pairs are given as the
   median and the best of the interleaved repeats; the other rows as the best.
2. The loader is timed against the model by scripts/bench_loader.py.

`.interp` is timed on all 16 variables (its cost grows less than linearly with the number of
variables, so timing a few and scaling up would overstate the ratio). The load average is
printed first: on a shared machine absolute times are noisy.

Usage: python scripts/bench_regrid.py [--repeats 5] [--interp-repeats 2] [--no-quarter-degree] [--grid NLAT NLON]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from datamodules.climatenet.datamodule import ALL16
from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.netcdf import LatLonFile
from datamodules.regrid import clear_matrix_cache, latlon_to_ico, regrid_matrix
from icolightning.grid import IcoGrid


def timings(repeats: int, *works: Callable[[], object]) -> list[list[float]]:
    """Wall times of each work over repeats, the works interleaved so that load changes on a
    shared machine hit all of them alike."""
    times: list[list[float]] = [[] for _ in works]
    for _ in range(repeats):
        for i, work in enumerate(works):
            start = time.perf_counter()
            work()
            times[i].append(time.perf_counter() - start)
    return times


def best_of(repeats: int, *works: Callable[[], object]) -> list[float]:
    """Minimum wall time of each work over interleaved repeats."""
    return [min(t) for t in timings(repeats, *works)]


def median_and_best(repeats: int, *works: Callable[[], object]) -> list[tuple[float, float]]:
    """(median, minimum) wall time of each work over interleaved repeats."""
    return [(float(np.median(t)), min(t)) for t in timings(repeats, *works)]


def read(path: Path) -> np.ndarray:
    with LatLonFile(path, ALL16) as data:
        return data.read_fields()


def read_and_regrid(path: Path, level: int, method: str = "bilinear") -> np.ndarray:
    """What the cache builder does: each variable regridded right after it is read."""
    with LatLonFile(path, ALL16) as data:
        return data.read_vertices(level, method)[0]


def regrid_in_memory(fields: np.ndarray, lat: np.ndarray, lon: np.ndarray, level: int,
                     method: str = "bilinear") -> np.ndarray:
    """Regridding alone, one variable at a time, on fields already in memory (like `.interp`)."""
    return np.stack([latlon_to_ico(fields[:, c], lat, lon, level, method) for c in range(fields.shape[1])], axis=1)


def interp(fields: xr.DataArray, level: int) -> np.ndarray:
    """xarray's linear `.interp` at the vertex points, on fields already in memory."""
    vlat, vlon = IcoGrid(level).latlon.T
    points = {"lat": xr.DataArray(vlat, dims="vertex"), "lon": xr.DataArray(vlon, dims="vertex")}
    return fields.interp(points, method="linear").values


def conservative_build_time(level: int) -> float:
    """Seconds to build the exact conservative weights of a 0.25-degree global grid (721 x 1440,
    rows at the poles) to `level`, the icosahedral grid's own set-up (Voronoi areas) excluded."""
    _ = IcoGrid(level).areas  # computed once per level, outside the timing
    lat, lon = np.linspace(-90.0, 90.0, 721), np.arange(1440) * 0.25
    clear_matrix_cache()
    start = time.perf_counter()
    regrid_matrix(lat, lon, level, "conservative")
    seconds = time.perf_counter() - start
    clear_matrix_cache()
    return seconds


def check_paths_agree(path: Path, fields: np.ndarray, lat: np.ndarray, lon: np.ndarray, level: int) -> None:
    """The timed paths compute the same vertex values for both methods (else the timings compare
    different work): read + regrid against regrid alone on the fields read once."""
    for method in ("bilinear", "conservative"):
        piped, alone = read_and_regrid(path, level, method), regrid_in_memory(fields, lat, lon, level, method)
        if piped.shape != alone.shape or not np.allclose(piped, alone, rtol=1e-6, atol=1e-6, equal_nan=True):
            raise SystemExit(f"bench_regrid.py: {method}: read + regrid {piped.shape} differs from regrid alone "
                             f"{alone.shape}")


def row(label: str, seconds: float, note: str = "") -> None:
    print(f"{label:<46}{seconds * 1e3:9.1f} ms{note}")


def verdict(label: str, value: float, target: str, ok: bool) -> None:
    print(f"{label:<46}{value:9.2f} x   (target {target}: {'ok' if ok else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", type=int, nargs=2, default=(768, 1152), metavar=("NLAT", "NLON"),
                        help="the synthetic file's grid (default ClimateNet's 768 x 1152)")
    parser.add_argument("--interp-repeats", type=int, default=2, help="repeats of the (slow) .interp timing")
    parser.add_argument("--no-quarter-degree", dest="quarter_degree", action="store_false",
                        help="skip timing the conservative weights of a 0.25-degree grid to level 6")
    args = parser.parse_args()
    level, repeats = args.level, args.repeats
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    print(f"CPUs: {os.cpu_count()}, load average (1, 5, 15 min): {load}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nlat, nlon = args.grid
        path = generate_dataset(tmp / "big", n_train=1, n_test=0, nlat=nlat, nlon=nlon, seed=0)[0]
        size = path.stat().st_size / 2**20
        print(f"file: {path.name} ({size:.0f} MiB, 16 x {nlat} x {nlon} float32, synthetic), level {level}")
        with LatLonFile(path, ALL16) as data:
            lat, lon = data.lat, data.lon
        start = time.perf_counter()
        read_and_regrid(path, level)
        first = time.perf_counter() - start
        t_read, t_pipeline = best_of(repeats, lambda: read(path), lambda: read_and_regrid(path, level))
        fields = read(path)
        (t_regrid,) = best_of(repeats, lambda: regrid_in_memory(fields, lat, lon, level))
        clear_matrix_cache()
        (t_first,) = best_of(1, lambda: regrid_in_memory(fields, lat, lon, level))
        t_build = t_first - t_regrid
        start = time.perf_counter()
        regrid_in_memory(fields, lat, lon, level, "conservative")
        t_build_cons = time.perf_counter() - start
        check_paths_agree(path, fields, lat, lon, level)  # after the first conservative call: it builds
        (t_cons, b_cons), (t_bil, b_bil) = median_and_best(
            repeats, lambda: regrid_in_memory(fields, lat, lon, level, "conservative"),
            lambda: regrid_in_memory(fields, lat, lon, level))
        (t_pipe_cons, b_pipe_cons), (t_pipe_bil, b_pipe_bil) = median_and_best(
            repeats, lambda: read_and_regrid(path, level, "conservative"), lambda: read_and_regrid(path, level))
        array = xr.DataArray(fields[0], dims=("variable", "lat", "lon"), coords={"lat": lat, "lon": lon})
        (t_interp,) = best_of(max(1, args.interp_repeats), lambda: interp(array, level))

        print(f"\nbest of {repeats} runs")
        row("read 16 variables (netCDF4 via xarray)", t_read)
        row("read + regrid (the cache builder's path)", t_pipeline)
        row("regrid alone, fields in memory", t_regrid)
        row("xarray .interp, fields in memory (all 16)", t_interp)
        row("one-time matrix build per (grid, level)", t_build, f"  (first call incl. setup {first:.2f} s)")
        print(f"median (best) of {repeats} runs, conservative and bilinear side by side")
        row("conservative: read + regrid", t_pipe_cons, f" ({b_pipe_cons * 1e3:.1f})  bilinear "
            f"{t_pipe_bil * 1e3:.1f} ms ({b_pipe_bil * 1e3:.1f})")
        row("conservative: regrid alone, fields in memory", t_cons, f" ({b_cons * 1e3:.1f})  bilinear "
            f"{t_bil * 1e3:.1f} ms ({b_bil * 1e3:.1f})")
        row("conservative: first call incl. matrix build", t_build_cons)
        if args.quarter_degree:
            row("conservative weights, 0.25 deg (721 x 1440) -> level 6", conservative_build_time(6),
                "  (exact overlaps, one build)")
        print()
        verdict("read+regrid / read", t_pipeline / t_read, "<= 1.5x", t_pipeline / t_read <= 1.5)
        verdict(".interp / regrid", t_interp / t_regrid, ">= 20x", t_interp / t_regrid >= 20)
        verdict("conservative / bilinear, read + regrid (median)", t_pipe_cons / t_pipe_bil, "<= 2x",
                t_pipe_cons / t_pipe_bil <= 2)
        verdict("conservative / bilinear, regrid alone (median)", t_cons / t_bil, "<= 2x", t_cons / t_bil <= 2)
        print("\nthe loader against the model: python scripts/bench_loader.py")


if __name__ == "__main__":
    main()
