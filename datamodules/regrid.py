"""Lat-lon <-> icosahedral regridding through precomputed sparse matrices.

Fields are interpolated bilinearly in (latitude, longitude), periodic in longitude when the
grid goes all the way round, with the pole taken as the mean of the nearest grid row so that
caps beyond the last row (Gaussian and cell-centred grids) are interpolated too. Labels use the
nearest source point in 3-D, which is exact at the poles and across the date line.

A matrix depends only on the two grids, so it is built once per (grid, level, method) and
applied as a sparse matrix-vector product (scipy CSR, in the field's precision, one field at a
time): regridding touches O(nnz) values, not the whole field.
Any CF ordering is accepted (ascending or descending latitude, longitudes in [0, 360) or
[-180, 180), a repeated cyclic column); the matrix indexes the caller's array as given.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
from scipy.spatial import cKDTree

from icolightning.grid import IcoGrid

Method = Literal["bilinear", "nearest", "conservative", "majority"]
METHODS: tuple[str, ...] = ("bilinear", "nearest", "conservative")
"""Methods for continuous fields (a matrix each)."""
LABEL_METHODS: tuple[str, ...] = ("nearest", "majority")
"""Methods for class labels: majority is the class with the largest area share (conservative weights)."""
_LON_TOL = 1e-9
_CACHE_SIZE = 16
_LOCATE_CHUNK = 1 << 16


def latlon_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] of points given in degrees."""
    phi, lam = np.deg2rad(np.asarray(lat, np.float64)), np.deg2rad(np.asarray(lon, np.float64))
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


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


@dataclass(frozen=True)
class LatLonGrid:
    """A rectilinear lat-lon grid in the caller's ordering, with sorted views for searching.

    `lon_sorted` starts after the largest longitude gap and increases (possibly past 360), so a
    regional grid that straddles 0° or 180° is one contiguous interval.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_order: np.ndarray
    lon_order: np.ndarray
    lat_sorted: np.ndarray
    lon_sorted: np.ndarray
    periodic: bool

    @classmethod
    def from_coords(cls, lat: np.ndarray, lon: np.ndarray) -> LatLonGrid:
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        if lat.size < 2 or lon.size < 2:
            raise ValueError(f"need at least 2 latitudes and 2 longitudes, got {lat.size} x {lon.size}")
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("latitude/longitude coordinates contain NaN or inf")
        if lat.min() < -90 - 1e-6 or lat.max() > 90 + 1e-6:
            raise ValueError(f"latitudes must lie in [-90, 90], got [{lat.min()}, {lat.max()}]")
        lat = np.clip(lat, -90.0, 90.0)
        lat_order = np.argsort(lat, kind="stable")
        lat_sorted = lat[lat_order]
        if np.any(np.diff(lat_sorted) <= 0):
            raise ValueError("latitudes must be strictly monotonic (no repeated rows)")
        wrapped = np.mod(lon, 360.0)
        wrapped[wrapped >= 360.0 - _LON_TOL] = 0.0
        unique, first = np.unique(np.round(wrapped, 9), return_index=True)
        gaps = np.diff(np.append(unique, unique[0] + 360.0))
        start = (int(np.argmax(gaps)) + 1) % unique.size
        lon_order = np.roll(first, -start)
        lon_sorted = np.roll(unique, -start)
        lon_sorted = lon_sorted[0] + np.mod(lon_sorted - lon_sorted[0], 360.0)
        periodic = bool(gaps.max() <= 1.5 * np.delete(gaps, np.argmax(gaps)).max())
        return cls(lat, lon, lat_order, lon_order, lat_sorted, lon_sorted, periodic)

    @property
    def num_points(self) -> int:
        return self.lat.size * self.lon.size

    def flat_index(self, sorted_row: np.ndarray, sorted_col: np.ndarray) -> np.ndarray:
        """Index into the caller's flattened [nlat * nlon] array of sorted (row, col) positions."""
        return self.lat_order[sorted_row] * self.lon.size + self.lon_order[sorted_col]

    def xyz(self) -> np.ndarray:
        """[nlat * nlon, 3] unit vectors in the caller's (row-major) order."""
        lat, lon = np.meshgrid(self.lat, self.lon, indexing="ij")
        return latlon_xyz(lat.reshape(-1), lon.reshape(-1))

    def cap_reaches_pole(self, north: bool) -> bool:
        """Whether the polar cap beyond the outermost row may be interpolated towards the pole.

        Only for grids that go all the way round and whose outermost row is at most 1.5 row
        spacings from the pole (Gaussian and cell-centred global grids); anything further is a
        regional grid, and the cap is outside it.
        """
        lat_s = self.lat_sorted
        gap, spacing = (90.0 - lat_s[-1], lat_s[-1] - lat_s[-2]) if north else (lat_s[0] + 90.0, lat_s[1] - lat_s[0])
        return self.periodic and gap <= 1.5 * spacing

    def locate(self, tlat: np.ndarray, tlon: np.ndarray) -> tuple[np.ndarray, ...]:
        """Bilinear bracket of target points in sorted positions.

        Returns (covered, row0, row1, b, col0, col1, a, cap): interpolation is between rows
        row0/row1 with fraction b and columns col0/col1 with fraction a; cap is the share of the
        pole value (the mean of row0) for targets between the outermost row and the pole.
        Targets outside a regional grid are not covered.
        """
        lat_s, lon_s = self.lat_sorted, self.lon_sorted
        nlat, nlon = lat_s.size, lon_s.size
        pos = lon_s - lon_s[0]
        u = np.mod(np.asarray(tlon, np.float64) - lon_s[0], 360.0)
        u[u >= 360.0 - _LON_TOL] = 0.0
        col0 = np.clip(np.searchsorted(pos, u, side="right") - 1, 0, nlon - 1)
        inner = col0 < nlon - 1
        col1 = np.where(inner, col0 + 1, 0)
        right = np.where(inner, pos[np.minimum(col0 + 1, nlon - 1)], 360.0)
        a = np.clip((u - pos[col0]) / (right - pos[col0]), 0.0, 1.0)
        lon_inside = inner | (u <= pos[-1] + _LON_TOL)
        if not self.periodic:
            a = np.where(inner, a, 0.0)

        tlat = np.clip(np.asarray(tlat, np.float64), -90.0, 90.0)
        i = np.searchsorted(lat_s, tlat, side="right") - 1
        north, south = tlat > lat_s[-1], tlat < lat_s[0]
        row0 = np.clip(i, 0, nlat - 1)
        row1 = np.minimum(row0 + 1, nlat - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(row1 > row0, (tlat - lat_s[row0]) / (lat_s[row1] - lat_s[row0]), 0.0)
            cap_north = (tlat - lat_s[-1]) / (90.0 - lat_s[-1])
            cap_south = (lat_s[0] - tlat) / (lat_s[0] + 90.0)
        cap = np.where(north, cap_north, np.where(south, cap_south, 0.0))
        b = np.where(north | south, 0.0, b)
        at_pole = np.abs(tlat) >= 90.0
        pole_row = np.where(tlat > 0, lat_s[-1] >= 90.0, lat_s[0] <= -90.0)
        cap = np.where(at_pole, 1.0, np.nan_to_num(cap))
        cap_ok = np.where(tlat > 0, self.cap_reaches_pole(north=True), self.cap_reaches_pole(north=False))
        in_lat_range = ~(north | south)
        covered = (in_lat_range & (lon_inside | self.periodic)) | ((north | south) & cap_ok)
        covered |= at_pole & (pole_row | cap_ok)
        return covered, row0, row1, b, col0, col1, a, cap


def _bilinear_to_points(grid: LatLonGrid, tlat: np.ndarray, tlon: np.ndarray) -> RegridMatrix:
    covered, row0, row1, b, col0, col1, a, cap = grid.locate(tlat, tlon)
    targets = np.flatnonzero(covered)
    row0, row1, b, col0, col1, a, cap = (v[targets] for v in (row0, row1, b, col0, col1, a, cap))
    keep = 1.0 - cap
    rows = [np.tile(targets, 4)]
    corners = ((row0, col0), (row0, col1), (row1, col0), (row1, col1))
    cols = [np.concatenate([grid.flat_index(r, c) for r, c in corners])]
    vals = [np.concatenate([keep * (1 - b) * (1 - a), keep * (1 - b) * a, keep * b * (1 - a), keep * b * a])]
    in_cap = np.flatnonzero(cap > 0)
    if in_cap.size:
        nlon = grid.lon_sorted.size
        ring_cols = np.arange(nlon)
        rows.append(np.repeat(targets[in_cap], nlon))
        cols.append(grid.flat_index(np.repeat(row0[in_cap], nlon), np.tile(ring_cols, in_cap.size)))
        vals.append(np.repeat(cap[in_cap] / nlon, nlon))
    return matrix_from_triplets(rows, cols, vals, (len(tlat), grid.num_points))


def matrix_from_triplets(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> RegridMatrix:
    """Sum duplicate (target, source) pairs and drop zero weights, so that a NaN source only
    reaches the targets that really depend on it."""
    coo = scipy.sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape)
    csr = coo.tocsr()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return RegridMatrix(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data, shape[1], False)


def _nearest_matrix(source_xyz: np.ndarray, target_xyz: np.ndarray, covered: np.ndarray) -> RegridMatrix:
    _, nearest = cKDTree(source_xyz).query(target_xyz)
    indptr = np.concatenate([[0], np.cumsum(covered)]).astype(np.int64)
    indices = nearest[covered].astype(np.int64)
    return RegridMatrix(indptr, indices, np.ones(indices.size), len(source_xyz), True)


def _triangle_inverses(grid: IcoGrid) -> tuple[np.ndarray, np.ndarray]:
    """Inverse vertex matrices of the 6 triangles (v, ring[k], ring[k+1]) around every vertex.

    Solving [A B C] λ = p gives the gnomonic barycentric coordinates of p in the triangle;
    all λ ≥ 0 means p's ray crosses it. Corners have 5 triangles; the sixth is marked invalid.
    """
    ring = grid.ring
    v = np.repeat(np.arange(grid.num_vertices)[:, None], 6, axis=1)
    nxt = np.roll(ring, -1, axis=1)
    corners = np.stack([v, ring, nxt], axis=-1)
    mats = np.swapaxes(grid.xyz[corners], -1, -2)
    valid = np.ones(ring.shape, bool)
    valid[grid.degree == 5, 5] = False
    mats[~valid] = np.eye(3)
    return np.linalg.inv(mats), np.where(valid[..., None], corners, -1)


def _ico_bilinear_to_points(level: int, target_xyz: np.ndarray) -> RegridMatrix:
    """Barycentric interpolation inside the icosahedral triangle that contains each target."""
    grid = IcoGrid(level)
    inverses, corners = _triangle_inverses(grid)
    tree = cKDTree(grid.xyz)
    rows, cols, vals = [], [], []
    for lo in range(0, len(target_xyz), _LOCATE_CHUNK):
        pts = target_xyz[lo : lo + _LOCATE_CHUNK]
        ids, lam = locate_in_triangles(pts, tree.query(pts, k=1)[1][:, None], inverses, corners)
        lost = np.flatnonzero(lam.min(axis=1) < -1e-9)
        if lost.size:
            ids[lost], lam[lost] = locate_in_triangles(pts[lost], tree.query(pts[lost], k=4)[1], inverses, corners)
            if (lam[lost].min(axis=1) < -1e-9).any():
                raise RuntimeError("could not locate some points in the icosahedral mesh")
        lam = np.clip(lam, 0.0, None)
        lam /= lam.sum(axis=1, keepdims=True)
        rows.append(np.repeat(np.arange(lo, lo + len(pts)), 3))
        cols.append(ids.reshape(-1))
        vals.append(lam.reshape(-1))
    return matrix_from_triplets(rows, cols, vals, (len(target_xyz), grid.num_vertices))


def locate_in_triangles(
    pts: np.ndarray, candidates: np.ndarray, inverses: np.ndarray, corners: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Among the triangles around the candidate vertices, the one containing each point."""
    inv = inverses[candidates].reshape(len(pts), -1, 3, 3)
    tri = corners[candidates].reshape(len(pts), -1, 3)
    lam = np.einsum("nkij,nj->nki", inv, pts)
    score = np.where(tri[..., 0] >= 0, lam.min(axis=-1), -np.inf)
    best = np.argmax(score, axis=1)
    pick = np.arange(len(pts))
    return tri[pick, best], lam[pick, best]


_MATRICES: OrderedDict[tuple, RegridMatrix] = OrderedDict()


def clear_matrix_cache() -> None:
    """Forget all cached matrices (for benchmarks, or to free memory)."""
    _MATRICES.clear()
    _OVERLAPS.clear()


def _digest(array: np.ndarray | None) -> str:
    if array is None:
        return "-"
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float64).tobytes()).hexdigest()


_OVERLAPS: OrderedDict[tuple, scipy.sparse.coo_matrix] = OrderedDict()
_OVERLAP_CACHE_SIZE = 2
"""The last exact overlap matrices, so that both directions of one grid pair build them once."""


def _conservative_overlaps(
    grid: LatLonGrid, ico: IcoGrid, lat_bounds: np.ndarray | None, lon_bounds: np.ndarray | None, key: tuple
) -> scipy.sparse.coo_matrix:
    """[N, num_points] exact overlap areas of Voronoi cells and source cells (steradians)."""
    from datamodules.conservative import overlaps, source_cells

    if key not in _OVERLAPS:
        _OVERLAPS[key] = overlaps(grid, ico, source_cells(grid, lat_bounds, lon_bounds))
        while len(_OVERLAPS) > _OVERLAP_CACHE_SIZE:
            _OVERLAPS.popitem(last=False)
    return _OVERLAPS[key]


def _conservative_to_ico(overlap: scipy.sparse.coo_matrix) -> RegridMatrix:
    """Each vertex: the area-weighted mean of the source cells over (the covered part of) its
    Voronoi cell; vertices the grid does not reach have no weights (NaN)."""
    covered = np.bincount(overlap.row, overlap.data, minlength=overlap.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = overlap.data / covered[overlap.row]
    return matrix_from_triplets([overlap.row], [overlap.col], [weights], overlap.shape)


def _transposed_conservative(overlap: scipy.sparse.coo_matrix) -> RegridMatrix:
    """Each source cell: the area-weighted mean of the vertices' Voronoi cells over it (the same
    overlaps transposed; the Voronoi cells tile the sphere, so a column sums to the cell area)."""
    col_sums = np.bincount(overlap.col, overlap.data, minlength=overlap.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = overlap.data / col_sums[overlap.col]
    return matrix_from_triplets([overlap.col], [overlap.row], [weights], overlap.shape[::-1])


def _repeat_cyclic(matrix: RegridMatrix, grid: LatLonGrid) -> RegridMatrix:
    """Targets in a repeated longitude column (e.g. 360 next to 0) copy the rows of the column
    they repeat: only the first of equal longitudes is a source cell, the others get no overlap."""
    wrapped = np.mod(grid.lon, 360.0)
    wrapped[wrapped >= 360.0 - _LON_TOL] = 0.0
    _, first, inverse = np.unique(np.round(wrapped, 9), return_index=True, return_inverse=True)
    same = first[inverse]
    if np.array_equal(same, np.arange(grid.lon.size)):
        return matrix
    source = (np.arange(grid.lat.size)[:, None] * grid.lon.size + same[None, :]).reshape(-1)
    csr = matrix.to_scipy()[source]
    return RegridMatrix(csr.indptr.astype(np.int64), csr.indices.astype(np.int64), csr.data, matrix.num_sources,
                        False)


def regrid_matrix(
    lat: np.ndarray,
    lon: np.ndarray,
    level: int,
    method: Method,
    to_ico: bool = True,
    lat_bounds: np.ndarray | None = None,
    lon_bounds: np.ndarray | None = None,
) -> RegridMatrix:
    """The (cached) matrix between a lat-lon grid and an icosahedral level, either direction.

    `lat_bounds`/`lon_bounds` ([nlat, 2], [nlon, 2] CF cell bounds) only matter for conservative.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "conservative":
        lat_bounds = lon_bounds = None
    key = (to_ico, int(level), method, _digest(lat), _digest(lon), _digest(lat_bounds), _digest(lon_bounds))
    if key in _MATRICES:
        _MATRICES.move_to_end(key)
        return _MATRICES[key]
    grid = LatLonGrid.from_coords(lat, lon)
    ico = IcoGrid(int(level))
    if method == "conservative":
        overlap = _conservative_overlaps(grid, ico, lat_bounds, lon_bounds, key[1:])
        matrix = _conservative_to_ico(overlap) if to_ico else _repeat_cyclic(_transposed_conservative(overlap), grid)
    elif to_ico:
        tlat, tlon = ico.latlon.T
        if method == "bilinear":
            matrix = _bilinear_to_points(grid, tlat, tlon)
        else:
            matrix = _nearest_matrix(grid.xyz(), ico.xyz, grid.locate(tlat, tlon)[0])
    else:
        tlat, tlon = (v.reshape(-1) for v in np.meshgrid(grid.lat, grid.lon, indexing="ij"))
        txyz = latlon_xyz(tlat, tlon)
        if method == "bilinear":
            matrix = _ico_bilinear_to_points(ico.level, txyz)
        else:
            matrix = _nearest_matrix(ico.xyz, txyz, np.ones(len(txyz), bool))
    _MATRICES[key] = matrix
    while len(_MATRICES) > _CACHE_SIZE:
        _MATRICES.popitem(last=False)
    return matrix


def regrid_fingerprint() -> str:
    """A hash of the matrices of a small fixed case: every method, both directions, level 1.

    It changes whenever the regridding algorithm changes what it computes, which is what the
    cache version (`datamodules.cache.CACHE_VERSION`) must follow. Weights are rounded to 8
    decimals so that the last bits of floating-point arithmetic do not count.
    """
    lat = np.linspace(-85.0, 87.5, 9)[::-1]
    lon = np.arange(-180.0, 180.0, 30.0) + 7.5
    digest = hashlib.sha1()
    for to_ico in (True, False):
        for method in METHODS:
            matrix = regrid_matrix(lat, lon, 1, method, to_ico=to_ico)
            for array in (matrix.indptr, matrix.indices):
                digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
            digest.update(np.round(matrix.weights, 8).astype(np.float64).tobytes())
    return digest.hexdigest()[:16]


def _majority(matrix: RegridMatrix, labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(majority class [..., targets], class fractions [..., K, targets]) of class ids 0, 1, ...

    Integer labels keep their dtype. Float labels may be NaN (missing, e.g. a decoded _FillValue):
    missing cells leave the weights, and targets without any valid cell come out NaN."""
    labels = np.asarray(labels)
    integer = np.issubdtype(labels.dtype, np.integer)
    valid = np.isfinite(labels) if not integer else np.ones(labels.shape, bool)
    present = labels[valid]
    if not integer and not np.array_equal(present, np.round(present)):
        raise ValueError("majority regridding needs whole-number class labels")
    if present.size and present.min() < 0:
        raise ValueError("class labels must be >= 0")
    k = int(num_classes if num_classes is not None else (present.max() + 1 if present.size else 1))
    if not matrix.covered.all() and integer:
        raise ValueError(f"{(~matrix.covered).sum()} targets lie outside the source grid and have no majority class")
    onehot = [np.where(valid, labels == c, np.nan) for c in range(k)]
    fractions = np.stack([matrix.apply(member, skipna=True) for member in onehot], axis=-2)
    if integer:
        return fractions.argmax(axis=-2).astype(labels.dtype), fractions
    empty = np.isnan(fractions).all(axis=-2)
    majority = np.nanargmax(np.where(empty[..., None, :], 0.0, fractions), axis=-2)
    return np.where(empty, np.nan, majority).astype(labels.dtype), fractions


def _check_method(method: str) -> None:
    if method not in (*METHODS, "majority"):
        raise ValueError(f"method must be one of {(*METHODS, 'majority')}, got {method!r}")


def latlon_to_ico(
    values: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    level: int,
    method: Method = "bilinear",
    skipna: bool = True,
    lat_bounds: np.ndarray | None = None,
    lon_bounds: np.ndarray | None = None,
) -> np.ndarray:
    """Regrid [..., nlat, nlon] on the given lat-lon grid to [..., N] icosahedral vertices.

    bilinear and conservative return floats (float32 stays float32); conservative is the
    area-weighted mean over each vertex's Voronoi cell (`IcoGrid.areas`) from exact overlap
    areas, cells from the CF bounds when given, else midway between centres; it preserves the
    global integral. On a regional grid a vertex is the mean over the part of its Voronoi cell
    that the grid covers (NaN where it covers none), so sum(covered area x value) is the grid's
    integral.
    nearest keeps the dtype, so labels stay integers; majority (integer labels) takes the class
    covering the largest share of the Voronoi cell (see `class_fractions`). Targets outside a
    regional grid are NaN (an error for integer values). With skipna, NaN sources are skipped and
    the other weights renormalised.
    """
    _check_method(method)
    values = np.asarray(values)
    lat, lon = np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1)
    if values.ndim < 2 or values.shape[-2:] != (lat.size, lon.size):
        raise ValueError(f"values {values.shape} must end in (nlat, nlon) = ({lat.size}, {lon.size})")
    matrix_method = "conservative" if method == "majority" else method
    matrix = regrid_matrix(lat, lon, level, matrix_method, True, lat_bounds, lon_bounds)
    flat = values.reshape(*values.shape[:-2], -1)
    if method == "majority":
        return _majority(matrix, flat, None)[0]
    return matrix.apply(flat, skipna=skipna)


def class_fractions(
    labels: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    level: int,
    num_classes: int,
    lat_bounds: np.ndarray | None = None,
    lon_bounds: np.ndarray | None = None,
) -> np.ndarray:
    """Area share of each class in every vertex's Voronoi cell: [..., nlat, nlon] -> [..., K, N]
    (sums to 1 over K; soft targets for a loss)."""
    labels = np.asarray(labels)
    matrix = regrid_matrix(np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1), level, "conservative", True,
                           lat_bounds, lon_bounds)
    return _majority(matrix, labels.reshape(*labels.shape[:-2], -1), num_classes)[1]


def level_of(num_vertices: int) -> int:
    """The icosahedral level with N = 10·4^r + 2 vertices."""
    level = round(float(np.log((num_vertices - 2) / 10) / np.log(4))) if num_vertices > 2 else -1
    if level < 0 or 10 * 4**level + 2 != num_vertices:
        raise ValueError(f"{num_vertices} is not an icosahedral vertex count 10·4^r + 2")
    return level


def ico_to_latlon(
    values: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    method: Method = "bilinear",
    skipna: bool = True,
    lat_bounds: np.ndarray | None = None,
    lon_bounds: np.ndarray | None = None,
) -> np.ndarray:
    """Regrid [..., N] vertex values onto the lat-lon grid (lat, lon) -> [..., nlat, nlon].

    The level is inferred from N. bilinear interpolates inside the containing mesh triangle;
    nearest copies the nearest vertex (masks and labels); conservative is the area-weighted mean
    of the Voronoi cells over each lat-lon cell (the global integral is preserved); majority
    takes the class of integer labels covering most of the cell.
    """
    _check_method(method)
    values = np.asarray(values)
    lat, lon = np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1)
    level = level_of(values.shape[-1])
    matrix_method = "conservative" if method == "majority" else method
    matrix = regrid_matrix(lat, lon, level, matrix_method, False, lat_bounds, lon_bounds)
    out = _majority(matrix, values, None)[0] if method == "majority" else matrix.apply(values, skipna=skipna)
    return out.reshape(*values.shape[:-1], lat.size, lon.size)
