"""The sparse regridding matrix: CSR weights applied one field at a time, NaN-aware."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

if TYPE_CHECKING:
    import torch

TORCH_MIN_WEIGHTS_PER_ROW = 8
"""Mean weights per row from which torch's CSR product is used. Measured on 16 cold ClimateNet
fields (768 x 1152, float32): conservative to levels 5-7 (110 to 12 weights per vertex) 12-23%
faster than scipy's; bilinear to level 5 (4 per vertex) 9-13% slower. torch is imported only when
such a matrix is first applied, so that regridding tools start without it."""


@dataclass(frozen=True)
class RegridMatrix:
    """Sparse weights in CSR form: out[..., i] = sum over row i of weights * values[..., indices].

    Rows without weights are targets outside the source grid; they come out as NaN.
    `selection` marks nearest-neighbour matrices, which are applied as a pure gather so that
    integer labels keep their dtype.
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    num_sources: int
    selection: bool

    @property
    def num_targets(self) -> int:
        return len(self.indptr) - 1

    @functools.cached_property
    def covered(self) -> np.ndarray:
        """[num_targets] bool: the target lies inside the source grid."""
        return np.diff(self.indptr) > 0

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        shape = (self.num_targets, self.num_sources)
        return scipy.sparse.csr_matrix((self.weights, self.indices, self.indptr), shape=shape)

    def apply(self, flat: np.ndarray, skipna: bool = True) -> np.ndarray:
        """Regrid [..., num_sources] -> [..., num_targets].

        With skipna, NaN sources are left out and the remaining weights renormalised, so a
        target is NaN only when all of its sources are NaN (or it lies outside the grid).
        """
        flat = np.asarray(flat)
        if flat.shape[-1] != self.num_sources:
            raise ValueError(f"expected {self.num_sources} source points in the last axis, got {flat.shape}")
        lead = flat.shape[:-1]
        flat = flat.reshape(-1, self.num_sources)
        if self.selection:
            return self._gather(flat).reshape(*lead, self.num_targets)
        dtype = flat.dtype if np.issubdtype(flat.dtype, np.floating) else np.float64
        return self._product(flat.astype(dtype, copy=False), skipna).reshape(*lead, self.num_targets)

    @functools.cached_property
    def _csr32(self) -> scipy.sparse.csr_matrix:
        return self._csr(np.float32)

    @functools.cached_property
    def _csr64(self) -> scipy.sparse.csr_matrix:
        return self._csr(np.float64)

    def _csr(self, dtype: type[np.floating]) -> scipy.sparse.csr_matrix:
        """The weights in the field's precision with 32-bit indices (half the index traffic)."""
        index = np.int32 if max(self.num_sources, self.indices.size) < 2**31 else np.int64
        shape = (self.num_targets, self.num_sources)
        data = (self.weights.astype(dtype), self.indices.astype(index), self.indptr.astype(index))
        return scipy.sparse.csr_matrix(data, shape=shape)

    @functools.cached_property
    def _mkl32(self) -> torch.Tensor | None:
        return _torch_csr(self._csr32) if self._long_rows else None

    @functools.cached_property
    def _mkl64(self) -> torch.Tensor | None:
        return _torch_csr(self._csr64) if self._long_rows else None

    @property
    def _long_rows(self) -> bool:
        """Rows long enough for torch's kernel to beat scipy's (TORCH_MIN_WEIGHTS_PER_ROW)."""
        return self.indices.size >= TORCH_MIN_WEIGHTS_PER_ROW * self.num_targets

    def _product(self, flat: np.ndarray, skipna: bool) -> np.ndarray:
        """[B, num_sources] float -> [B, num_targets], one matrix-vector product per row.

        float32 and float64 rows go through torch's CSR product (MKL's sparse kernel, on one
        thread) where the matrix has at least TORCH_MIN_WEIGHTS_PER_ROW weights per row: for the
        conservative weights of the ClimateNet grid to level 5 (110 per row) it takes about 0.8x
        the time of scipy's CSR product (docs/regridding.md, Speed). Shorter rows (bilinear: 4),
        other dtypes and matrices too large for 32-bit indices use scipy.

        A NaN source makes the targets that use it NaN; with skipna those targets are redone as
        the weighted mean of their valid sources (NaN only when none is valid). Rows of the
        matrix without weights (targets outside the grid) are NaN.
        """
        csr = self._csr32 if flat.dtype == np.float32 else self._csr64
        sparse = self._mkl32 if flat.dtype == np.float32 else self._mkl64
        if csr.dtype != flat.dtype:
            csr, sparse = self._csr(flat.dtype.type), None
        if sparse is not None:
            import torch

            if not (flat.flags.c_contiguous and flat.flags.writeable):
                flat = np.array(flat, order="C")  # torch.from_numpy wants a writable, positively strided buffer
        out = np.empty((flat.shape[0], self.num_targets), dtype=flat.dtype)
        with _one_torch_thread() if sparse is not None else contextlib.nullcontext():
            for row, values in zip(out, flat, strict=True):
                if sparse is None:
                    row[:] = csr @ values
                else:
                    torch.mv(sparse, torch.from_numpy(values), out=torch.from_numpy(row))
                if skipna and np.isnan(row.sum()):
                    bad = np.flatnonzero(np.isnan(row))
                    row[bad] = self._mean_of_valid(csr, values, bad)
        covered = self.covered
        if not covered.all():
            out[:, ~covered] = np.nan
        return out

    @staticmethod
    def _mean_of_valid(csr: scipy.sparse.csr_matrix, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Weighted mean of the non-NaN sources of each of `rows` (NaN where none is valid).

        Touches only the entries of those rows, so a few missing values cost little.
        """
        indptr = csr.indptr
        counts = indptr[rows + 1] - indptr[rows]
        segments = np.cumsum(counts) - counts
        entries = np.arange(counts.sum()) + np.repeat(indptr[rows] - segments, counts)
        picked, weights = values[csr.indices[entries]], csr.data[entries]
        valid = ~np.isnan(picked)
        sums = np.add.reduceat(np.where(valid, picked * weights, 0), segments)
        totals = np.add.reduceat(np.where(valid, weights, 0), segments)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, sums / totals, np.nan)

    def _gather(self, flat: np.ndarray) -> np.ndarray:
        covered = self.covered
        if covered.all():
            return flat[:, self.indices]
        if not np.issubdtype(flat.dtype, np.floating):
            raise ValueError(
                f"{(~covered).sum()} targets lie outside the source grid and integer values cannot "
                "be NaN there; convert to float first"
            )
        out = np.full((flat.shape[0], self.num_targets), np.nan, dtype=flat.dtype)
        out[:, covered] = flat[:, self.indices]
        return out


def _torch_csr(csr: scipy.sparse.csr_matrix) -> torch.Tensor | None:
    """The same CSR arrays (shared, not copied; `csr` gets its indices sorted) as a torch sparse
    tensor, or None where the indices are 64-bit: torch's MKL kernel takes 32-bit indices and
    would convert 64-bit ones on every call."""
    if csr.indices.dtype != np.int32 or csr.indptr.dtype != np.int32:
        return None
    import torch

    csr.sort_indices()  # in place, a no-op when sorted: torch's invariants want sorted rows
    arrays = (torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices), torch.from_numpy(csr.data))
    # One thread for the invariant check too: in a process forked after torch ran a parallel
    # region (the cache builder's fork pool), a multi-threaded OpenMP region deadlocks.
    with warnings.catch_warnings(), _one_torch_thread():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(*arrays, size=csr.shape, check_invariants=True)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch (and MKL) on one thread for the products, restored afterwards: like scipy's. On the
    shared 2-core machine, with the other core busy, two threads made the level-5 product 4-9x
    slower (with it idle, 1.8x faster), and the cache builder can run a worker process per core.
    torch's thread count is process-wide: a torch computation running in another Python thread
    meanwhile also gets one thread."""
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def matrix_from_triplets(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> RegridMatrix:
    """Sum duplicate (target, source) pairs and drop zero weights, so that a NaN source only
    reaches the targets that really depend on it."""
    coo = scipy.sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape)
    csr = coo.tocsr()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return RegridMatrix(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data, shape[1], False)
