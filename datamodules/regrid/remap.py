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

import hashlib
from collections import OrderedDict
from typing import Literal

import numpy as np
import scipy.sparse

from datamodules.regrid.conservative import overlaps, source_cells
from datamodules.regrid.interpolation import bilinear_matrix, ico_bilinear_matrix, nearest_matrix
from datamodules.regrid.latlon_grid import LON_TOL, LatLonGrid, latlon_xyz
from datamodules.regrid.matrix import RegridMatrix, matrix_from_triplets
from icolightning.grid import IcoGrid, level_of

Method = Literal["bilinear", "nearest", "conservative", "majority"]
METHODS: tuple[str, ...] = ("bilinear", "nearest", "conservative")
"""Methods for continuous fields (a matrix each)."""
LABEL_METHODS: tuple[str, ...] = ("nearest", "majority")
"""Methods for class labels: majority is the class with the largest area share (conservative weights)."""
_CACHE_SIZE = 16


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
    wrapped[wrapped >= 360.0 - LON_TOL] = 0.0
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
            matrix = bilinear_matrix(grid, tlat, tlon)
        else:
            matrix = nearest_matrix(grid.xyz(), ico.xyz, grid.locate(tlat, tlon)[0])
    else:
        tlat, tlon = (v.reshape(-1) for v in np.meshgrid(grid.lat, grid.lon, indexing="ij"))
        txyz = latlon_xyz(tlat, tlon)
        if method == "bilinear":
            matrix = ico_bilinear_matrix(ico.level, txyz)
        else:
            matrix = nearest_matrix(ico.xyz, txyz, np.ones(len(txyz), bool))
    _MATRICES[key] = matrix
    while len(_MATRICES) > _CACHE_SIZE:
        _MATRICES.popitem(last=False)
    return matrix


def regrid_fingerprint() -> str:
    """A hash of the matrices of a small fixed case: every method, both directions, level 1.

    It changes whenever the regridding algorithm changes what it computes, which is what the
    cache version (`datamodules.cache.version.CACHE_VERSION`) must follow. Weights are rounded to 8
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


def _unmasked(values: np.ndarray) -> np.ndarray:
    """The values as a plain array, masked cells of a numpy masked array (what netCDF4 returns for
    a variable with a `_FillValue`) as NaN, so that they leave the weights as NaN cells do.

    Integers with masked cells become float64 (NaN marks the gaps); without masked cells the
    data is used as it is, dtype kept.
    """
    if not isinstance(values, np.ma.MaskedArray):
        return np.asarray(values)
    if not np.ma.is_masked(values):
        return np.ma.getdata(values)
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
    return np.ma.filled(values.astype(dtype), np.nan)


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
    regional grid are NaN (an error for integer values). With skipna, NaN sources (and the masked
    cells of a numpy masked array) are skipped and the other weights renormalised.
    """
    _check_method(method)
    values = _unmasked(values)
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
    labels = _unmasked(labels)
    matrix = regrid_matrix(np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1), level, "conservative", True,
                           lat_bounds, lon_bounds)
    return _majority(matrix, labels.reshape(*labels.shape[:-2], -1), num_classes)[1]


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
    values = _unmasked(values)
    lat, lon = np.asarray(lat).reshape(-1), np.asarray(lon).reshape(-1)
    level = level_of(values.shape[-1])
    matrix_method = "conservative" if method == "majority" else method
    matrix = regrid_matrix(lat, lon, level, matrix_method, False, lat_bounds, lon_bounds)
    out = _majority(matrix, values, None)[0] if method == "majority" else matrix.apply(values, skipna=skipna)
    return out.reshape(*values.shape[:-1], lat.size, lon.size)
