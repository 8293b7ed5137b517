"""Interpolating matrices: bilinear in (lat, lon) onto points, nearest neighbour in 3-D, and
barycentric inside the icosahedral triangles for the way back to lat-lon."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from datamodules.regrid.latlon_grid import LatLonGrid
from datamodules.regrid.matrix import RegridMatrix, matrix_from_triplets
from icolightning.grid import IcoGrid

_LOCATE_CHUNK = 1 << 16


def bilinear_matrix(grid: LatLonGrid, tlat: np.ndarray, tlon: np.ndarray) -> RegridMatrix:
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


def nearest_matrix(source_xyz: np.ndarray, target_xyz: np.ndarray, covered: np.ndarray) -> RegridMatrix:
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


def ico_bilinear_matrix(level: int, target_xyz: np.ndarray) -> RegridMatrix:
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
