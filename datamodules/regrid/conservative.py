"""Overlap areas between lat-lon cells and the icosahedral vertices' spherical Voronoi cells.

`overlaps(...)[v, s]` is the area (steradians) of source cell s inside vertex v's Voronoi cell,
the ingredient of first-order conservative remapping in both directions. Exact polygon clipping
of lat-lon cells (bounded by parallels, which are not great circles) against Voronoi polygons is
costly; instead each overlap is estimated and then made exact where it matters:

1. A cell whose four corners have the same nearest vertex lies inside that vertex's cell (cells
   much smaller than a Voronoi cell; larger cells are always treated as mixed).
2. A mixed cell is split into s x s equal-area sub-cells (uniform in sin(latitude) and in
   longitude); each sub-cell's area goes to the Voronoi cell of its centre (nearest vertex).
3. The estimates already give every column its exact cell area; area is then moved between the
   vertices sharing a cell (one sparse linear solve, see `_fit_rows`) until row v sums to
   `IcoGrid.areas[v]` as well. Then for any field x,
   sum_v area_v * mean_v = sum_s area_s * x_s to round-off: the global integral is preserved.

Only global grids (periodic in longitude, cells reaching both poles) get the row fit; on a
regional grid a vertex is the mean over the part of its cell that the grid covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.spatial import cKDTree

from datamodules.regrid.latlon_grid import LatLonGrid

_MIN_SUBDIVISION = 3
_REFINE = 8
"""Sub-cells are at most 1/_REFINE of the vertex spacing across."""
_MAX_SUBDIVISION = 64
_PURE_FRACTION = 0.5
"""Cells wider than this share of the vertex spacing are always sub-sampled."""
_CHUNK_POINTS = 1 << 21
_FIT_TOLERANCE = 1e-12
_FIT_ITERATIONS = 5


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    phi, lam = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=-1)


@dataclass(frozen=True)
class SourceCells:
    """Cell bounds in degrees, rows and columns in the grid's sorted order (longitudes increase
    and may pass 360)."""

    lat_lo: np.ndarray
    lat_hi: np.ndarray
    lon_lo: np.ndarray
    lon_hi: np.ndarray
    is_global: bool

    def areas(self) -> np.ndarray:
        """[nlat, nlon] exact cell areas on the unit sphere (steradians)."""
        band = np.sin(np.deg2rad(self.lat_hi)) - np.sin(np.deg2rad(self.lat_lo))
        return np.outer(band, np.deg2rad(self.lon_hi - self.lon_lo))


def _edges_from_centres(centres: np.ndarray, first: float, last: float) -> tuple[np.ndarray, np.ndarray]:
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[first], mid]), np.concatenate([mid, [last]])


def _bounds_in_sorted_order(bounds: np.ndarray, order: np.ndarray, size: int, name: str) -> np.ndarray:
    bounds = np.asarray(bounds, np.float64)
    if bounds.shape != (size, 2) or not np.isfinite(bounds).all():
        raise ValueError(f"{name} bounds must be a finite ({size}, 2) array, got shape {bounds.shape}")
    return bounds[order]


def source_cells(
    grid: LatLonGrid, lat_bounds: np.ndarray | None = None, lon_bounds: np.ndarray | None = None
) -> SourceCells:
    """The cells of a lat-lon grid: CF bounds when given, else midpoints between centres.

    Without bounds the outermost rows of a global grid (see `LatLonGrid.cap_reaches_pole`) extend
    to the poles and the outermost columns of a periodic one meet across the seam; a regional grid
    extends half a spacing beyond its outermost centres.
    """
    lat_s, lon_s = grid.lat_sorted, grid.lon_sorted
    if lat_bounds is None:
        south = -90.0 if grid.cap_reaches_pole(north=False) else max(-90.0, 1.5 * lat_s[0] - 0.5 * lat_s[1])
        north = 90.0 if grid.cap_reaches_pole(north=True) else min(90.0, 1.5 * lat_s[-1] - 0.5 * lat_s[-2])
        lat_lo, lat_hi = _edges_from_centres(lat_s, south, north)
    else:
        b = np.clip(_bounds_in_sorted_order(lat_bounds, grid.lat_order, lat_s.size, "latitude"), -90.0, 90.0)
        lat_lo, lat_hi = b.min(axis=1), b.max(axis=1)
    if lon_bounds is None:
        if grid.periodic:
            seam = 0.5 * (lon_s[-1] + lon_s[0] + 360.0)
            lon_lo, lon_hi = _edges_from_centres(lon_s, seam - 360.0, seam)
        else:
            first, last = 1.5 * lon_s[0] - 0.5 * lon_s[1], 1.5 * lon_s[-1] - 0.5 * lon_s[-2]
            lon_lo, lon_hi = _edges_from_centres(lon_s, first, last)
    else:
        b = _bounds_in_sorted_order(lon_bounds, grid.lon_order, lon_s.size, "longitude")
        offsets = np.mod(b - lon_s[:, None] + 180.0, 360.0) - 180.0
        lon_lo, lon_hi = lon_s + offsets.min(axis=1), lon_s + offsets.max(axis=1)
    if np.any(lat_hi <= lat_lo) or np.any(lon_hi <= lon_lo):
        raise ValueError("every grid cell must have a positive extent in latitude and longitude")
    covers_poles = lat_lo.min() <= -90.0 + 1e-9 and lat_hi.max() >= 90.0 - 1e-9
    is_global = bool(covers_poles and abs((lon_hi - lon_lo).sum() - 360.0) < 1e-6)
    return SourceCells(lat_lo, lat_hi, lon_lo, lon_hi, is_global)


def _row_widths(cells: SourceCells) -> np.ndarray:
    """[nlat] largest angular extent (radians) of the cells of each row."""
    lo, hi = np.deg2rad(cells.lat_lo), np.deg2rad(cells.lat_hi)
    widest_parallel = np.where((lo < 0) & (hi > 0), 1.0, np.maximum(np.cos(lo), np.cos(hi)))
    return np.maximum(hi - lo, np.deg2rad((cells.lon_hi - cells.lon_lo).max()) * widest_parallel)


def _corner_owners(cells: SourceCells, tree: cKDTree) -> np.ndarray:
    """[nlat, nlon, 4] nearest vertex of every cell corner (corners shared between cells are
    looked up once)."""
    lat_edges = np.unique(np.concatenate([cells.lat_lo, cells.lat_hi]))
    lon_edges = np.unique(np.concatenate([cells.lon_lo, cells.lon_hi]))
    lat_grid, lon_grid = np.meshgrid(lat_edges, lon_edges, indexing="ij")
    owner = tree.query(_unit_vectors(lat_grid, lon_grid).reshape(-1, 3), workers=-1)[1].reshape(lat_grid.shape)
    rows = [np.searchsorted(lat_edges, cells.lat_lo), np.searchsorted(lat_edges, cells.lat_hi)]
    cols = [np.searchsorted(lon_edges, cells.lon_lo), np.searchsorted(lon_edges, cells.lon_hi)]
    return np.stack([owner[np.ix_(r, c)] for r in rows for c in cols], axis=-1)


def _subsample(
    cells: SourceCells, rows: np.ndarray, cols: np.ndarray, s: int, tree: cKDTree
) -> tuple[np.ndarray, np.ndarray]:
    """(position in rows/cols, nearest vertex) of the centre of each of the s x s equal-area
    sub-cells of the given cells."""
    u = (np.arange(s) + 0.5) / s
    z_lo, z_hi = np.sin(np.deg2rad(cells.lat_lo[rows])), np.sin(np.deg2rad(cells.lat_hi[rows]))
    lat = np.rad2deg(np.arcsin(np.clip(z_lo[:, None] + u * (z_hi - z_lo)[:, None], -1.0, 1.0)))
    lon = cells.lon_lo[cols][:, None] + u * (cells.lon_hi - cells.lon_lo)[cols][:, None]
    xyz = _unit_vectors(np.repeat(lat[:, :, None], s, axis=2), np.repeat(lon[:, None, :], s, axis=1))
    owner = tree.query(xyz.reshape(-1, 3), workers=-1)[1]
    return np.repeat(np.arange(rows.size), s * s), owner


def _estimate(cells: SourceCells, xyz: np.ndarray) -> scipy.sparse.coo_matrix:
    """Estimated overlaps [N, nlat * nlon] (sorted cell order), columns summing to the cell areas."""
    nlat, nlon = cells.lat_lo.size, cells.lon_lo.size
    spacing = np.sqrt(4 * np.pi / len(xyz))
    tree = cKDTree(xyz)
    areas = cells.areas().reshape(-1)
    corners = _corner_owners(cells, tree).reshape(-1, 4)
    coarse = np.repeat(_row_widths(cells) > _PURE_FRACTION * spacing, nlon)
    pure = (corners == corners[:, :1]).all(axis=1) & ~coarse
    vertex, cell, share = [corners[pure, 0]], [np.flatnonzero(pure)], [areas[pure]]
    mixed = np.flatnonzero(~pure)
    if mixed.size:
        widest = _row_widths(cells)[np.unique(mixed // nlon)].max()
        s = int(np.clip(np.ceil(_REFINE * widest / spacing), _MIN_SUBDIVISION, _MAX_SUBDIVISION))
        step = max(1, _CHUNK_POINTS // (s * s))
        for lo in range(0, mixed.size, step):
            chunk = mixed[lo : lo + step]
            which, owner = _subsample(cells, chunk // nlon, chunk % nlon, s, tree)
            vertex.append(owner)
            cell.append(chunk[which])
            share.append(areas[chunk[which]] / (s * s))
    shape = (len(xyz), nlat * nlon)
    coo = scipy.sparse.coo_matrix((np.concatenate(share), (np.concatenate(vertex), np.concatenate(cell))), shape)
    coo.sum_duplicates()
    return coo


def _fit_rows(coo: scipy.sparse.coo_matrix, row_sums: np.ndarray, col_sums: np.ndarray) -> np.ndarray:
    """Entries moved between the vertices that share a cell so that rows sum to `row_sums`, with
    the columns (already exact) unchanged.

    Entry p_vs becomes p_vs * (1 + phi_v - phibar_s), phibar_s the p-weighted mean of phi over
    column s: the column sums stay the same for any phi, and the row sums change by M phi with the
    graph Laplacian M = diag(rows) - P diag(1 / columns) P^T. One sparse solve of M phi = deficit
    (phi pinned at one vertex; the deficits sum to zero) fits the rows; a repeat mops up round-off.
    Only cells shared by several vertices take part (a cell inside one Voronoi cell adds 0 to M).
    """
    from scipy.sparse.linalg import spsolve

    data = coo.data.copy()
    n = row_sums.size
    row_sums = row_sums * (col_sums.sum() / row_sums.sum())  # both are 4 pi; agree to the last bit
    for _ in range(_FIT_ITERATIONS):
        p = scipy.sparse.csr_matrix((data, (coo.row, coo.col)), coo.shape)
        rows = np.asarray(p.sum(axis=1)).ravel()
        deficit = row_sums - rows
        if np.abs(deficit / row_sums).max() < _FIT_TOLERANCE:
            return data
        laplacian = (scipy.sparse.diags(rows) - p @ scipy.sparse.diags(1.0 / col_sums) @ p.T).tocsc()
        phi = np.zeros(n)
        phi[1:] = spsolve(laplacian[1:, 1:], deficit[1:])
        phibar = (p.T @ phi) / col_sums
        factor = 1.0 + phi[coo.row] - phibar[coo.col]
        if factor.min() <= 0:
            raise RuntimeError("conservative weights: the row fit would make an overlap negative")
        data = data * factor
        data *= (col_sums / np.bincount(coo.col, data, minlength=col_sums.size))[coo.col]
    raise RuntimeError(f"conservative weights did not converge (row error {np.abs(deficit / row_sums).max():.2e})")


def overlaps(
    grid: LatLonGrid, vertex_xyz: np.ndarray, vertex_areas: np.ndarray, cells: SourceCells
) -> scipy.sparse.coo_matrix:
    """[N, nlat * nlon] overlap areas, columns in the caller's flattened (row-major) order."""
    coo = _estimate(cells, vertex_xyz)
    areas = cells.areas().reshape(-1)
    if cells.is_global:
        if np.bincount(coo.row, minlength=len(vertex_xyz)).min() == 0:
            raise RuntimeError("a Voronoi cell received no sample; the source grid is too coarse")
        coo.data = _fit_rows(coo, vertex_areas, areas)
    nlon = cells.lon_lo.size
    columns = grid.flat_index(coo.col // nlon, coo.col % nlon)
    return scipy.sparse.coo_matrix((coo.data, (coo.row, columns)), (len(vertex_xyz), grid.num_points))
