"""scripts/bench_regrid_apply.py: every conservative variant it times computes the shipped product,
so a faster-looking row cannot come from a wrong result (a dropped weight, a wrong owner); and
scripts/bench_regrid.py runs end to end, its timed paths checked to agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from datamodules.climatenet.synthetic import grid_coords
from datamodules.regrid import regrid_matrix

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_regrid_apply.py"


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_regrid_apply", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_owner_split_keeps_each_cells_largest_weight_and_the_rest_sums_back():
    bench = load_script()
    dense = np.array([[0.5, 0.0, 0.2, 0.0], [0.3, 1.0, 0.7, 0.0], [0.0, 0.0, 0.1, 0.4]], np.float32)
    owner, weight, rest = bench.owner_split(scipy.sparse.csr_matrix(dense))
    np.testing.assert_array_equal(owner, [0, 1, 1, 2])
    np.testing.assert_array_equal(weight, dense.max(axis=0))
    rebuilt = rest.toarray()
    rebuilt[owner, np.arange(4)] += weight
    np.testing.assert_array_equal(rebuilt, dense)


@pytest.mark.parametrize(("dtype", "atol", "count"), [(np.float32, 1e-6, 14), (np.float64, 1e-13, 10)])
def test_every_conservative_variant_gives_the_float64_product(dtype, atol, count):
    """The shipped row is the package's own apply, and the float32-only constructions (owner
    split, column runs) are left out in float64."""
    bench = load_script()
    lat, lon = grid_coords(24, 36)
    fields = np.random.default_rng(0).standard_normal((3, lat.size * lon.size)).astype(dtype)
    matrix = regrid_matrix(lat, lon, 2, "conservative")
    reference = np.stack([matrix.to_scipy() @ x.astype(np.float64) for x in fields])
    works = bench.variants(2, 24, 36, dtype) | bench.threads(2, dtype, 24, 36)
    assert works[bench.SHIPPED] == matrix.apply
    assert sum(not name.startswith(bench.YARDSTICKS) for name in works) == count
    for name, work in works.items():
        if not name.startswith(bench.YARDSTICKS) or name.startswith("layout"):
            out = np.asarray(work(fields))
            assert out.dtype == dtype or name.startswith("owner"), name  # np.bincount sums in float64
            np.testing.assert_allclose(out, reference, rtol=0, atol=atol, err_msg=name)


def test_column_runs_on_a_regional_descending_grid_give_the_product():
    """Runs down the caller's latitude axis (descending here), block boundaries and the cells that
    straddle a Voronoi edge or the regional edge: runs @ prefix + straddle @ x == W @ x."""
    bench = load_script()
    lat, lon = np.arange(70.0, -41.0, -3.0), np.arange(-60.0, 61.0, 4.0)
    matrix = regrid_matrix(lat, lon, 3, "conservative").to_scipy()
    x = np.random.default_rng(1).random(lat.size * lon.size).astype(np.float32)
    band = bench.row_areas(lat, lon)
    csc = matrix.tocsc()
    alone = np.flatnonzero(np.diff(csc.indptr) == 1)  # cells inside one Voronoi cell
    pairs = np.unique(csc.indices[csc.indptr[alone]] * lon.size + alone % lon.size).size
    for block in (lat.size, 5, 16):
        runs, straddle = bench.column_runs(matrix, band, block)
        if block == lat.size:  # one run per vertex and column (the cells' weights follow the row areas)
            assert runs.nnz <= 2 * pairs
        out = runs @ bench.block_prefix(band, block)(x, np.empty((lat.size, lon.size), np.float32)) + straddle @ x
        np.testing.assert_allclose(out, matrix @ x.astype(np.float64), rtol=0, atol=1e-6, err_msg=f"block {block}")


def test_bench_regrid_runs_on_a_small_grid_and_prints_every_target(tmp_path):
    """scripts/bench_regrid.py end to end on a 48 x 72 file to level 2: it checks that its timed paths
    (read + regrid, regrid alone) compute the same vertex values for both methods before it times
    them, and prints each DESIGN §7 ratio with its verdict."""
    import os
    import subprocess

    script, root = SCRIPT.parent / "bench_regrid.py", str(SCRIPT.parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)  # this checkout's code first
    done = subprocess.run([sys.executable, str(script), "--grid", "48", "72", "--level", "2", "--repeats", "1",
                           "--interp-repeats", "1", "--no-quarter-degree"], capture_output=True, text=True,
                          timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]
    for label in ("read+regrid / read", ".interp / regrid", "conservative / bilinear, read + regrid",
                  "conservative / bilinear, regrid alone", "conservative: first call incl. matrix build"):
        assert label in done.stdout, done.stdout
    assert "16 x 48 x 72" in done.stdout
