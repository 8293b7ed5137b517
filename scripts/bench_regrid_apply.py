"""Ways of applying the conservative weights, timed side by side (docs/regridding.md, Speed).

The shipped apply is one scipy CSR matrix-vector product per field (float32 weights, int32
indices). This script times it against the alternatives numpy, scipy and torch offer, and
against the column-run formulation (prefix sums down each longitude column for the cells that lie
in one Voronoi cell, a CSR for the cells that straddle an edge; built here, not shipped), on 16
fields of the ClimateNet grid (768 x 1152, 56 MiB: each field is cold in the cache, as in
`scripts/bench_regrid.py`) to level 5, with the bilinear product and one dense pass over each
field (the read every conservative method needs) and the shipped loop over indices made
sequential (not a regridding: the cost of scipy's loop itself) and the column runs' two parts
alone as yardsticks. The variants run
interleaved, best of `--repeats`, so load changes on a shared machine hit all alike. Each
variant's largest difference from a float64 product is printed relative to the largest output.

Usage: python scripts/bench_regrid_apply.py [--level 5] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse
import torch
from bench_regrid import best_of

from datamodules.climatenet.synthetic import grid_coords
from datamodules.regrid import LatLonGrid, regrid_matrix
from datamodules.regrid.conservative import source_cells

Variant = Callable[[np.ndarray], np.ndarray]
warnings.filterwarnings("ignore", message="Sparse")  # torch: CSR support is beta, invariants unchecked


def owner_split(csr: scipy.sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray, scipy.sparse.csr_matrix]:
    """Each source cell's largest weight as (owner row, weight), and the other weights as a CSR
    matrix: 76% of the ClimateNet cells lie in one Voronoi cell and need nothing else."""
    csc = csr.tocsc()
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    order = np.lexsort((-csc.data, cols))  # per column, the largest weight first
    first = np.zeros(csc.nnz, bool)
    first[order[np.concatenate([[0], np.flatnonzero(np.diff(cols[order])) + 1])]] = True
    rest = scipy.sparse.csr_matrix((csc.data[~first], (csc.indices[~first], cols[~first])), csc.shape)
    return csc.indices[first].astype(np.int64), csc.data[first], rest


def torch_csr(csr: scipy.sparse.csr_matrix) -> torch.Tensor:
    return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                   torch.from_numpy(csr.indices.astype(np.int64)),
                                   torch.from_numpy(csr.data), size=csr.shape)


def per_field(product: Callable[[np.ndarray], np.ndarray]) -> Variant:
    return lambda fields: np.stack([np.asarray(product(x)) for x in fields])


def torch_threads(matrix: torch.Tensor, threads: int) -> Variant:
    def run(fields: np.ndarray) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return np.stack([torch.mv(matrix, torch.from_numpy(x)).numpy() for x in fields])
        finally:
            torch.set_num_threads(before)
    return run


def row_areas(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """[nlat] the sin-latitude extent of each row in the caller's order: an owned cell's weight is
    this times a per-(vertex, column) factor."""
    grid = LatLonGrid.from_coords(lat, lon)
    cells = source_cells(grid)
    band = np.empty(lat.size)
    band[grid.lat_order] = np.sin(np.deg2rad(cells.lat_hi)) - np.sin(np.deg2rad(cells.lat_lo))
    return band


def column_runs(csr: scipy.sparse.csr_matrix, band: np.ndarray, block: int
                ) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
    """(runs, straddle): W @ x == runs @ P + straddle @ x, P the prefix sums of x * band[:, None]
    down each column, restarting every `block` rows (float32 precision).

    A cell alone in its column of W lies in one Voronoi cell, with weight band[row] * factor,
    factor = dlon / covered area, the same down a contiguous run of such cells of one vertex and
    column; each run is the difference of two prefix values, plus one per block boundary it
    crosses. Every other weight (cells that straddle a Voronoi edge) stays in `straddle`.
    """
    nlat = band.size
    nlon = csr.shape[1] // nlat
    csc = csr.tocsc()
    owned = np.diff(csc.indptr) == 1
    first = np.minimum(csc.indptr[:-1], csc.nnz - 1)
    vertex = np.where(owned, csc.indices[first], -1).reshape(nlat, nlon)
    factor = np.where(owned, csc.data[first], 0.0).reshape(nlat, nlon) / band[:, None]
    pad = np.full((1, nlon), -1)
    above, below = np.vstack([pad, vertex[:-1]]), np.vstack([vertex[1:], pad])
    rel = lambda a, b: np.abs(a - b) <= 1e-9 * np.abs(b)  # noqa: E731
    joins_above = np.vstack([np.zeros((1, nlon), bool), rel(factor[1:], factor[:-1])]) & (vertex == above)
    joins_below = np.vstack([rel(factor[:-1], factor[1:]), np.zeros((1, nlon), bool)]) & (vertex == below)
    start_r, start_c = np.nonzero((vertex >= 0) & ~joins_above)
    end_r, end_c = np.nonzero((vertex >= 0) & ~joins_below)
    order_s, order_e = np.lexsort((start_r, start_c)), np.lexsort((end_r, end_c))
    start_r, col, end_r = start_r[order_s], start_c[order_s], end_r[order_e]
    v, coef = vertex[start_r, col], factor[start_r, col]
    crossings = end_r // block - start_r // block + 1  # one + entry per block the run touches
    minus = start_r % block != 0  # and one - entry unless the run starts a block
    count = crossings + minus
    run = np.repeat(np.arange(v.size), count)
    nth = np.arange(run.size) - np.repeat(np.cumsum(count) - count, count) - minus[run]  # -1: the - entry
    row = np.where(nth < 0, start_r[run] - 1, np.minimum(end_r[run], (start_r[run] // block + nth + 1) * block - 1))
    order = np.argsort(v[run], kind="stable")  # a run's entries stay together: small partial sums in float32
    indptr = np.concatenate([[0], np.cumsum(np.bincount(v[run], minlength=csr.shape[0]))])
    runs = scipy.sparse.csr_matrix(((np.where(nth < 0, -coef[run], coef[run])[order]).astype(np.float32),
                                    (row * nlon + col[run])[order], indptr), csr.shape)
    coo = csc.tocoo()
    keep = ~owned[coo.col]
    straddle = scipy.sparse.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), csr.shape, dtype=np.float32)
    return runs, straddle


def block_prefix(band: np.ndarray, block: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """out = prefix sums of x * band down each column, restarting every `block` rows: a row loop
    of `block` whole-array adds (numpy's cumsum along axis 0 walks each column on its own)."""
    weights = band.astype(np.float32)[:, None]

    def prefix(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(x.reshape(out.shape), weights, out=out)
        for i in range(1, block):
            rows = out[i::block]
            np.add(out[i - 1::block][: len(rows)], rows, out=rows)
        return out.reshape(-1)
    return prefix


def prefix_runs(csr: scipy.sparse.csr_matrix, band: np.ndarray, block: int, parts: bool = False
                ) -> dict[str, Variant]:
    """The column-run formulation (docs/regridding.md, Tried), with its two dense-ish parts alone
    as yardsticks when `parts`: the prefix pass, and the straddling weights' CSR product."""
    runs, straddle = column_runs(csr, band, block)
    for matrix in (runs, straddle):
        matrix.indices, matrix.indptr = matrix.indices.astype(np.int32), matrix.indptr.astype(np.int32)
    prefix, buffer = block_prefix(band, block), np.empty((band.size, csr.shape[1] // band.size), np.float32)
    print(f"column runs, block {block}: {runs.nnz} run ends, {straddle.nnz} straddling weights")
    works = {f"column runs, block-{block} prefix (+ runs, straddle CSR)":
             per_field(lambda x: runs @ prefix(x, buffer) + straddle @ x)}
    if parts:
        works[f"parts: the block-{block} prefix pass alone"] = per_field(lambda x: prefix(x, buffer)[:1])
        works["parts: the straddling weights' CSR alone"] = per_field(lambda x: straddle @ x)
    return works


YARDSTICKS = ("bilinear", "read", "loop", "parts")
"""Names of the rows that are not a conservative regridding."""


def variants(level: int, nlat: int = 768, nlon: int = 1152) -> dict[str, Variant]:
    """Every way of computing W @ x for 16 fields, bilinear and the read bound as yardsticks."""
    lat, lon = grid_coords(nlat, nlon)
    cons, bil = regrid_matrix(lat, lon, level, "conservative"), regrid_matrix(lat, lon, level, "bilinear")
    c32, c64, b32 = cons.to_scipy().astype(np.float32), cons.to_scipy(), bil.to_scipy().astype(np.float32)
    c32.indices, c32.indptr = c32.indices.astype(np.int32), c32.indptr.astype(np.int32)
    csc, tc, n = c32.tocsc(), torch_csr(c32), cons.num_targets
    owner, w1, rest = owner_split(c32)
    owner_t, w1_t = torch.from_numpy(owner), torch.from_numpy(w1)
    sequential = scipy.sparse.csr_matrix((c32.data, np.arange(c32.nnz, dtype=np.int32) % c32.shape[1], c32.indptr),
                                         c32.shape)
    print(f"conservative: {c32.nnz} weights, {rest.nnz} beyond each cell's largest; bilinear: {b32.nnz}")
    band = row_areas(lat, lon)
    return {
        "shipped: scipy CSR float32, one field at a time": per_field(lambda x: c32 @ x),
        "scipy CSR, float64 weights and field": per_field(lambda x: c64 @ x.astype(np.float64)),
        "scipy CSC float32": per_field(lambda x: csc @ x),
        "torch CSR mv, 1 thread": torch_threads(tc, 1),
        "torch CSR mv, 2 threads": torch_threads(tc, 2),
        "owner + rest: np.bincount + CSR": per_field(lambda x: np.bincount(owner, w1 * x, minlength=n) + rest @ x),
        "owner + rest: torch index_add_ + CSR": per_field(
            lambda x: torch.zeros(n).index_add_(0, owner_t, torch.from_numpy(x) * w1_t).numpy() + rest @ x),
        **prefix_runs(c64, band, 16, parts=True),
        **prefix_runs(c64, band, 32),
        "all 16 at once: W @ X[n, 16] incl. transpose": lambda fields: (c32 @ np.ascontiguousarray(fields.T)).T,
        "bilinear: scipy CSR float32, one field at a time": per_field(lambda x: b32 @ x),
        "read bound: x.sum() of each field": lambda fields: np.array([x.sum() for x in fields]),
        "loop bound: the same CSR, indices made sequential": per_field(lambda x: sequential @ x),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}, load average: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    works = variants(args.level)
    lat, lon = grid_coords(768, 1152)
    fields = np.random.default_rng(0).standard_normal((16, lat.size * lon.size)).astype(np.float32)
    reference = regrid_matrix(lat, lon, args.level, "conservative").to_scipy() @ fields[0].astype(np.float64)
    best = dict(zip(works, best_of(args.repeats, *(lambda w=w: w(fields) for w in works.values())), strict=True))
    print(f"\nbest of {args.repeats}, 16 fields, level {args.level}; load after: {os.getloadavg()[0]:.2f}")
    shipped = best["shipped: scipy CSR float32, one field at a time"]
    for name, work in works.items():
        out = None if name.startswith(YARDSTICKS) else np.asarray(work(fields[:1]))[0]
        error = "" if out is None else f"  diff {np.abs(out - reference).max() / np.abs(reference).max():.1e}"
        print(f"{name:<52}{best[name] * 1e3:8.2f} ms  ({best[name] / shipped:4.2f} x shipped){error}")


if __name__ == "__main__":
    main()
