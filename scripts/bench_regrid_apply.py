"""Ways of applying the conservative weights, timed side by side (docs/regridding.md, Speed).

The shipped apply (`RegridMatrix.apply`) is one torch CSR matrix-vector product per field (MKL's
sparse kernel, 32-bit indices, on one thread), in the field's own precision. This script times it
against the other products scipy and torch offer: scipy CSR (the previous shipped product) and
CSC; torch with 64-bit indices, as a matrix product, in COO form; all 16 fields at once with the
fields last, `[cells, 16]`, the transpose from the files' `[16, cells]` included; in float32 the
owner split and the column-run formulation (prefix sums down each longitude column for the cells
that lie in one Voronoi cell, a CSR for the cells that straddle an edge; built here, not shipped).
All on 16 fields of the ClimateNet grid (768 x 1152, 56 MiB in float32: each field is cold in the
cache, as in `scripts/bench_regrid.py`) to level 5, float32 and float64 (the files' two
precisions; the pipeline keeps the field's own), with yardsticks that are not a conservative
regridding: the shipped bilinear apply (the denominator of the 2x target) and scipy's bilinear
product, the fields-last products on data already `[cells, 16]` (the transpose left out), one
dense pass over each field (the read every conservative method needs), scipy's loop with its
indices made sequential, and the column runs' two parts alone. torch's product on one and two
threads is timed apart afterwards.

The variants run interleaved, `--repeats` rounds, so load changes on a shared machine hit all
alike; the median and the best round are printed, with the load average before and after. Each
variant's largest difference from a float64 product is printed relative to the largest output.

Usage: python scripts/bench_regrid_apply.py [--level 5] [--repeats 9] [--dtype float32 float64]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse
import torch

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


def torch_csr(csr: scipy.sparse.csr_matrix, index: type = np.int64) -> torch.Tensor:
    return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(index)),
                                   torch.from_numpy(csr.indices.astype(index)),
                                   torch.from_numpy(csr.data), size=csr.shape)


def per_field(product: Callable[[np.ndarray], np.ndarray]) -> Variant:
    return lambda fields: np.stack([np.asarray(product(x)) for x in fields])


def torch_threads(matrix: torch.Tensor, threads: int, column: bool = False) -> Variant:
    """torch's product one field at a time on `threads` threads: torch.mv, or torch.mm with the
    field as an [n, 1] matrix when `column`."""
    def run(fields: np.ndarray) -> np.ndarray:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            if column:
                return np.stack([torch.mm(matrix, torch.from_numpy(x)[:, None])[:, 0].numpy() for x in fields])
            return np.stack([torch.mv(matrix, torch.from_numpy(x)).numpy() for x in fields])
        finally:
            torch.set_num_threads(before)
    return run


def fields_last(product: Callable[[np.ndarray], np.ndarray], copy: bool) -> Variant:
    """All fields in one product on X = fields.T, [n, B] C-contiguous (one cache line holds a cell's
    16 values); `copy`: the transpose is timed, else it is made once per input outside the timing
    (a yardstick: the files give the fields first)."""
    cache: list = [None, None]

    def run(fields: np.ndarray) -> np.ndarray:
        if copy:
            return product(np.ascontiguousarray(fields.T)).T
        if cache[0] is not fields:
            cache[:] = fields, np.ascontiguousarray(fields.T)
        return product(cache[1]).T
    return run


def embedding_bag(csr: scipy.sparse.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """W @ X as torch.embedding_bag (FBGEMM's kernel): bag i sums rows indices[indptr[i]:indptr[i+1]]
    of X, weighted."""
    indices = torch.from_numpy(csr.indices.astype(np.int64))
    offsets = torch.from_numpy(csr.indptr[:-1].astype(np.int64))
    weights = torch.from_numpy(csr.data)
    return lambda x: torch.nn.functional.embedding_bag(indices, torch.from_numpy(x), offsets, mode="sum",
                                                       per_sample_weights=weights).numpy()


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
        works["parts: the straddling weights alone, torch CSR mv"] = torch_threads(torch_csr(straddle, np.int32), 1)
    return works


YARDSTICKS = ("bilinear", "layout", "read", "loop", "parts")
"""Names of the rows that are not a conservative regridding of the fields as the files give them."""

SHIPPED = "shipped: RegridMatrix.apply (torch CSR mv, MKL, 1 thread)"
BILINEAR = "bilinear: RegridMatrix.apply (shipped)"


def variants(level: int, nlat: int = 768, nlon: int = 1152, dtype: type = np.float32) -> dict[str, Variant]:
    """Every way of computing W @ x for a stack of fields of `dtype`, with the yardsticks; the
    owner split and the column runs (float32 constructions) only for float32."""
    lat, lon = grid_coords(nlat, nlon)
    cons, bil = regrid_matrix(lat, lon, level, "conservative"), regrid_matrix(lat, lon, level, "bilinear")
    c, b = cons.to_scipy().astype(dtype), bil.to_scipy().astype(dtype)
    c.indices, c.indptr = c.indices.astype(np.int32), c.indptr.astype(np.int32)
    csc, n = c.tocsc(), cons.num_targets
    sequential = scipy.sparse.csr_matrix((c.data, np.arange(c.nnz, dtype=np.int32) % c.shape[1], c.indptr), c.shape)
    print(f"{np.dtype(dtype).name}: conservative {c.nnz} weights ({c.nnz / n:.0f} per vertex), bilinear {b.nnz}")
    coo = torch_csr(c).to_sparse_coo().coalesce()
    works = {
        SHIPPED: cons.apply,
        "scipy CSR (shipped before), one field at a time": per_field(lambda x: c @ x),
        "scipy CSC": per_field(lambda x: csc @ x),
        "torch CSR mv, 64-bit indices": torch_threads(torch_csr(c), 1),
        "torch CSR mm, field as [n, 1]": torch_threads(torch_csr(c, np.int32), 1, column=True),
        "torch COO sparse.mm": per_field(lambda x: torch.sparse.mm(coo, torch.from_numpy(x)[:, None])[:, 0]),
        "fields last: scipy CSR @ X[n, 16], transpose incl.": fields_last(lambda x: c @ x, True),
        "fields last: torch embedding_bag, transpose incl.": fields_last(embedding_bag(c), True),
    }
    if dtype == np.float32:
        owner, w1, rest = owner_split(c)
        owner_t, w1_t = torch.from_numpy(owner), torch.from_numpy(w1)
        band = row_areas(lat, lon)
        works |= {
            "owner + rest: np.bincount + CSR": per_field(lambda x: np.bincount(owner, w1 * x, minlength=n) + rest @ x),
            "owner + rest: torch index_add_ + CSR": per_field(
                lambda x: torch.zeros(n).index_add_(0, owner_t, torch.from_numpy(x) * w1_t).numpy() + rest @ x),
            **prefix_runs(cons.to_scipy(), band, 16, parts=True),
            **prefix_runs(cons.to_scipy(), band, 32),
        }
    return works | {
        BILINEAR: bil.apply,
        "bilinear: scipy CSR": per_field(lambda x: b @ x),
        "layout: fields last, data given as [n, 16]: scipy CSR": fields_last(lambda x: c @ x, False),
        "layout: fields last, data given as [n, 16]: embedding_bag": fields_last(embedding_bag(c), False),
        "read bound: x.sum() of each field": lambda fields: np.array([x.sum() for x in fields]),
        "loop bound: scipy CSR, indices made sequential": per_field(lambda x: sequential @ x),
    }


def threads(level: int, dtype: type, nlat: int = 768, nlon: int = 1152) -> dict[str, Variant]:
    """torch's CSR product on 1 and 2 threads, timed apart from the other variants: OpenMP's
    workers spin for a while after a parallel region and would slow whichever variant came next."""
    lat, lon = grid_coords(nlat, nlon)
    c = regrid_matrix(lat, lon, level, "conservative").to_scipy().astype(dtype)
    matrix = torch_csr(c, np.int32)
    return {f"torch CSR mv, {n} thread{'s' * (n > 1)}": torch_threads(matrix, n) for n in (1, 2)}


def rounds(repeats: int, works: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Wall times of each work over `repeats` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return times


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads by default), "
          f"scipy {scipy.__version__}, numpy {np.__version__}")
    lat, lon = grid_coords(768, 1152)
    reference_matrix = regrid_matrix(lat, lon, args.level, "conservative").to_scipy()
    fields64 = np.random.default_rng(0).standard_normal((16, lat.size * lon.size))
    for dtype in args.dtype:
        works = variants(args.level, dtype=np.dtype(dtype).type)
        fields = fields64.astype(dtype)
        reference = reference_matrix @ fields64[0]
        before = load()
        times = rounds(args.repeats, {name: (lambda w=w, f=fields: w(f)) for name, w in works.items()})
        print(f"\n{dtype}: 16 fields, level {args.level}, {args.repeats} interleaved rounds; "
              f"load average (1, 5, 15 min) before {before}, after {load()}")
        median = {name: float(np.median(t)) for name, t in times.items()}
        print(f"{'variant':<60}{'median':>9}{'best':>9}  {'/ bilinear':>10}{'/ shipped':>10}  diff")
        for name, work in works.items():
            out = None if name.startswith(YARDSTICKS) else np.asarray(work(fields[:1]))[0]
            error = "" if out is None else f"  {np.abs(out - reference).max() / np.abs(reference).max():.1e}"
            print(f"{name:<60}{median[name] * 1e3:6.2f} ms{min(times[name]) * 1e3:6.2f} ms"
                  f"  {median[name] / median[BILINEAR]:9.2f}x{median[name] / median[SHIPPED]:9.2f}x{error}")
        before = load()
        apart = rounds(args.repeats, {name: (lambda w=w, f=fields: w(f)) for name, w in threads(args.level,
                                                                                                np.dtype(dtype).type).items()})
        print(f"{dtype}, timed apart (load before {before}, after {load()}):")
        for name, t in apart.items():
            print(f"{name:<60}{np.median(t) * 1e3:6.2f} ms{min(t) * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
