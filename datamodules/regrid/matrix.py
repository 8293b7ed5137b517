"""The sparse regridding matrix: CSR weights applied one field at a time, NaN-aware."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse


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

    def _product(self, flat: np.ndarray, skipna: bool) -> np.ndarray:
        """[B, num_sources] float -> [B, num_targets], one matrix-vector product per row.

        A NaN source makes the targets that use it NaN; with skipna those targets are redone as
        the weighted mean of their valid sources (NaN only when none is valid). Rows of the
        matrix without weights (targets outside the grid) are NaN.
        """
        csr = self._csr32 if flat.dtype == np.float32 else self._csr64
        if csr.dtype != flat.dtype:
            csr = self._csr(flat.dtype.type)
        out = np.empty((flat.shape[0], self.num_targets), dtype=flat.dtype)
        for row, values in zip(out, flat, strict=True):
            row[:] = csr @ values
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


def matrix_from_triplets(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> RegridMatrix:
    """Sum duplicate (target, source) pairs and drop zero weights, so that a NaN source only
    reaches the targets that really depend on it."""
    coo = scipy.sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape)
    csr = coo.tocsr()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return RegridMatrix(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data, shape[1], False)
