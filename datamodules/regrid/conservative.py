"""Overlap areas between lat-lon cells and the icosahedral vertices' spherical Voronoi cells.

`overlaps(...)[v, s]` is the area (steradians) of source cell s inside vertex v's Voronoi cell,
the ingredient of first-order conservative remapping in both directions. The areas are exact to
round-off (`datamodules.regrid.spherical_overlap`: Green's theorem in (longitude, sin latitude), closed
form along the Voronoi cells' great-circle edges and the cells' parallels), so every row sums to
the vertex's Voronoi area (`IcoGrid.areas`; on a regional grid, the part of it the grid covers)
and every column to the cell's area, with no sampling, fitting or iteration. This module decides
what the cells are (CF bounds, or midway between centres) and maps them to the caller's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from datamodules.regrid.latlon_grid import LatLonGrid
from datamodules.regrid.spherical_overlap import overlap_matrix
from icolightning.grid import IcoGrid


@dataclass(frozen=True)
class SourceCells:
    """Cell bounds in degrees, rows and columns in the grid's sorted order (longitudes increase
    and may pass 360)."""

    lat_lo: np.ndarray
    lat_hi: np.ndarray
    lon_lo: np.ndarray
    lon_hi: np.ndarray

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
    return SourceCells(lat_lo, lat_hi, lon_lo, lon_hi)


def overlaps(grid: LatLonGrid, ico: IcoGrid, cells: SourceCells) -> scipy.sparse.coo_matrix:
    """[N, nlat * nlon] exact overlap areas, columns in the caller's flattened (row-major) order."""
    lat_bounds = np.stack([cells.lat_lo, cells.lat_hi], axis=1)
    lon_bounds = np.stack([cells.lon_lo, cells.lon_hi], axis=1)
    coo = overlap_matrix(lat_bounds, lon_bounds, ico).tocoo()
    nlon = cells.lon_lo.size
    columns = grid.flat_index(coo.col // nlon, coo.col % nlon)
    return scipy.sparse.coo_matrix((coo.data, (coo.row, columns)), (ico.num_vertices, grid.num_points))
