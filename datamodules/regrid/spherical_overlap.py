"""Exact overlap areas between lat-lon cells and the spherical Voronoi cells of a vertex mesh.

`overlap_matrix(lat_bounds, lon_bounds, grid)[v, i * nlon + k]` is the area (steradians, unit
sphere) of lat-lon cell (i, k) inside vertex v's Voronoi cell: the ingredient of first-order
conservative remapping in both directions. Nothing is sampled or fitted.

Why it is exact and cheap. In the coordinates (longitude λ, z = sin latitude) the sphere's area
element is dλ dz (Archimedes), so a lat-lon cell is a plain rectangle [a, b] x [z_lo, z_hi] and an
area is a planar area. By Green's theorem the area of (Voronoi cell V) ∩ (cell C) is the line
integral of -z dλ around its boundary. Meridians have dλ = 0 and contribute nothing; the
parallels contribute z·Δλ; what remains is, for every great-circle edge of V whose longitudes
meet [a, b], the integral of the edge's z clipped to [z_lo, z_hi]. On a great circle with unit
normal n (n_z > 0),

    z(λ) = -c / sqrt(n_z² + c²),   c = n_x cos λ + n_y sin λ,
    ∫ z dλ = -G(λ),                G = atan2(n_x sin λ - n_y cos λ, sqrt(n_z² + c²)),

and the edge meets the parallel z = Z where c = -n_z Z / sqrt(1 - Z²), so each clipped integral is
a handful of closed-form terms. This is the SCRIP line-integral idea, done in closed form. The
Voronoi vertices (circumcentres of the mesh triangles) and every edge's normal and longitude span
are computed once and shared by the two cells on either side, so the two contributions of an
edge cancel exactly and each column sums to its cell's area to round-off; each row sums to the
Voronoi cell's area (the part of it the grid covers, on a regional grid).

Assumptions: the mesh is a triangulation with counter-clockwise `ring`s (as `IcoGrid`), its
Voronoi edges are shorter than a half circle and pass through no pole, and each pole lies inside
one Voronoi cell (IcoGrid has a vertex at each pole). Cells may be any rectangles in (lon, lat):
non-uniform, gaps, a regional patch, a width up to 360°.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse

TWO_PI = 2.0 * np.pi
_CHUNK = 1 << 18
"""(vertex, column, row) triples per batch: bounds the memory at about 100 MB."""
_DROP = 1e-12
"""Entries below this fraction of their cell's area are round-off (non-overlapping candidates)."""


class VertexMesh(Protocol):
    """What is needed of the mesh (`icolightning.grid.IcoGrid` provides it)."""

    @property
    def xyz(self) -> np.ndarray: ...

    @property
    def ring(self) -> np.ndarray: ...

    @property
    def degree(self) -> np.ndarray: ...


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _wrap(x: np.ndarray) -> np.ndarray:
    """Angles into [-π, π)."""
    return np.mod(x + np.pi, TWO_PI) - np.pi


class VoronoiEdges:
    """The Voronoi polygon of every vertex as up to 6 directed great-circle edges (CCW from outside).

    Per undirected edge (shared by two cells): unit normal with n_z >= 0, start longitude and
    signed longitude span Δλ, all computed once. Per (vertex, slot): the edge id and whether the
    cell runs along it in the edge's own direction.
    """

    def __init__(self, mesh: VertexMesh) -> None:
        xyz = np.asarray(mesh.xyz, np.float64)
        ring = np.asarray(mesh.ring)
        degree = np.asarray(mesh.degree)
        n = len(xyz)
        slots = ring.shape[1]
        self.valid = np.arange(slots)[None, :] < degree[:, None]
        v = np.repeat(np.arange(n)[:, None], slots, axis=1)
        nxt = np.roll(ring, -1, axis=1)
        # ring of a degree-5 vertex repeats its first neighbour in the last slot
        nxt = np.where(np.arange(slots)[None, :] == degree[:, None] - 1, ring[:, :1], nxt)
        tri = np.sort(np.stack([v, ring, nxt], axis=-1), axis=-1)
        tri_key = (tri[..., 0] * n + tri[..., 1]) * n + tri[..., 2]
        keys, tri_id = np.unique(np.where(self.valid, tri_key, -1), return_inverse=True)
        tri_id = tri_id.reshape(v.shape)
        first = np.zeros(keys.size, np.int64)
        first[tri_id.reshape(-1)] = np.arange(tri_id.size)
        corners = tri.reshape(-1, 3)[first]
        a, b, c = (xyz[corners[:, j]] for j in range(3))
        with np.errstate(invalid="ignore"):  # the placeholder of the masked slots is degenerate
            centre = _normalise(np.cross(b - a, c - a))
        centre *= np.sign(np.einsum("ij,ij->i", centre, a + b + c))[:, None]
        centre[keys < 0] = np.nan
        self.centres = centre
        centre_lon = np.arctan2(centre[:, 1], centre[:, 0])

        # edge (slot k) of vertex v runs from centre(tri k-1) to centre(tri k) and faces ring[k]
        start = np.where(np.arange(slots)[None, :] == 0, tri_id[np.arange(n), degree - 1][:, None],
                         np.roll(tri_id, 1, axis=1))
        end = tri_id
        other = ring
        lo, hi = np.minimum(v, other), np.maximum(v, other)
        edge_key = np.where(self.valid, lo * n + hi, -1)
        ekeys, edge_id = np.unique(edge_key, return_inverse=True)
        edge_id = edge_id.reshape(v.shape)
        forward = v < other  # the smaller vertex's traversal is the edge's own direction
        owner = np.zeros(ekeys.size, np.int64)
        flat_fwd = np.flatnonzero((forward & self.valid).reshape(-1))
        owner[edge_id.reshape(-1)[flat_fwd]] = flat_fwd
        p, q = start.reshape(-1)[owner], end.reshape(-1)[owner]
        normal = _normalise(np.cross(centre[p], centre[q]))
        normal *= np.where(normal[:, 2] < 0, -1.0, 1.0)[:, None]
        self.normal = normal
        self.rho = np.hypot(normal[:, 0], normal[:, 1])
        self.mu = np.arctan2(normal[:, 1], normal[:, 0])
        self.lon0 = centre_lon[p]
        self.dlon = _wrap(centre_lon[q] - centre_lon[p])
        self.edge_id = np.where(self.valid, edge_id, 0)
        self.forward = forward
        zp, zq = centre[p, 2], centre[q, 2]
        self.zmin, self.zmax = np.minimum(zp, zq), np.maximum(zp, zq)
        # an arc can bulge beyond its endpoints' latitudes: the circle's extremes are at λ = μ (+π)
        for extreme, target in ((self.mu + np.pi, "zmax"), (self.mu, "zmin")):
            inside = np.mod(extreme - np.minimum(self.lon0, self.lon0 + self.dlon), TWO_PI) < np.abs(self.dlon)
            if target == "zmax":
                self.zmax = np.where(inside, self.rho, self.zmax)
            else:
                self.zmin = np.where(inside, -self.rho, self.zmin)
        self.poles = (int(np.argmax(xyz[:, 2])), int(np.argmin(xyz[:, 2])))

    def cell_extents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per vertex: (lon_min, lon_max) in radians (unwrapped from the first corner), (z_min,
        z_max), and whether the cell holds a pole (then it spans every longitude)."""
        signed = np.where(self.forward, 1.0, -1.0) * self.dlon[self.edge_id] * self.valid
        cumulative = np.cumsum(signed, axis=1)
        start = np.where(self.forward[:, :1], self.lon0[self.edge_id[:, :1]],
                         self.lon0[self.edge_id[:, :1]] + self.dlon[self.edge_id[:, :1]])[:, 0]
        around = np.concatenate([np.zeros((len(start), 1)), cumulative[:, :-1]], axis=1)
        around = np.where(self.valid, around, 0.0)
        lon_min, lon_max = start + around.min(axis=1), start + around.max(axis=1)
        zmin = np.where(self.valid, self.zmin[self.edge_id], np.inf).min(axis=1)
        zmax = np.where(self.valid, self.zmax[self.edge_id], -np.inf).max(axis=1)
        polar = np.zeros(len(start), bool)
        polar[list(self.poles)] = True
        zmax[self.poles[0]] = 1.0
        zmin[self.poles[1]] = -1.0
        return lon_min, lon_max, zmin, zmax, polar


def _z_on_circle(normal: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """z at longitude λ on the great circle (0 on a meridian's own longitude, where it is any z;
    a meridian edge spans no longitude and contributes nothing)."""
    c = normal[..., 0] * np.cos(lam) + normal[..., 1] * np.sin(lam)
    denominator = np.sqrt(normal[..., 2] ** 2 + c * c)
    return -c / np.where(denominator > 0, denominator, 1.0)


def _antiderivative(normal: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """G(λ) with ∫ z dλ = -G along the great circle."""
    cos, sin = np.cos(lam), np.sin(lam)
    c = normal[..., 0] * cos + normal[..., 1] * sin
    return np.arctan2(normal[..., 0] * sin - normal[..., 1] * cos, np.sqrt(normal[..., 2] ** 2 + c * c))


def clipped_integral(
    normal: np.ndarray, rho: np.ndarray, mu: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
    z_lo: np.ndarray, z_hi: np.ndarray,
) -> np.ndarray:
    """∫_α^β (clip(z(λ), z_lo, z_hi) - z_lo) dλ along great circles (normal [P, 3], n_z >= 0).

    The interval is cut where the circle crosses z_lo or z_hi (at most twice each); on each piece
    the integrand is z_hi - z_lo, 0, or z - z_lo, integrated in closed form.
    """
    cuts = [alpha, beta]
    with np.errstate(divide="ignore", invalid="ignore"):
        for level in (z_lo, z_hi):
            t = -normal[:, 2] * level / (np.sqrt(1.0 - level * level) * rho)
            swing = np.arccos(t)
            for lam in (mu + swing, mu - swing):
                lam = alpha + np.mod(lam - alpha, TWO_PI)
                cuts.append(np.where(np.isfinite(lam) & (lam < beta), lam, beta))
    cuts = np.sort(np.stack(cuts, axis=1), axis=1)
    p, q = cuts[:, :-1], cuts[:, 1:]
    n3 = normal[:, None, :]
    zm = _z_on_circle(n3, 0.5 * (p + q))
    lo, hi = z_lo[:, None], z_hi[:, None]
    g = _antiderivative(n3, cuts)
    inner = -(g[:, 1:] - g[:, :-1]) - lo * (q - p)
    pieces = np.where(zm >= hi, (hi - lo) * (q - p), np.where(zm <= lo, 0.0, inner))
    return np.where(q > p, pieces, 0.0).sum(axis=1)


def _sorted_cells(bounds: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bounds = np.asarray(bounds, np.float64)
    if bounds.ndim != 2 or bounds.shape[1] != 2 or not np.isfinite(bounds).all():
        raise ValueError(f"{name} bounds must be a finite (n, 2) array, got shape {bounds.shape}")
    lo, hi = bounds.min(axis=1), bounds.max(axis=1)
    if np.any(hi <= lo):
        raise ValueError(f"every {name} cell must have a positive extent")
    return lo, hi, np.argsort(lo, kind="stable")


def _ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment id, value) of the concatenated integer ranges [start, start + count)."""
    counts = np.maximum(counts, 0)
    seg = np.repeat(np.arange(counts.size), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return seg, starts[seg] + offset


def overlap_matrix(lat_bounds: np.ndarray, lon_bounds: np.ndarray, grid: VertexMesh) -> scipy.sparse.csr_matrix:
    """[N, nlat * nlon] exact overlap areas (steradians) of lat-lon cells and Voronoi cells.

    `lat_bounds` [nlat, 2] and `lon_bounds` [nlon, 2] are cell edges in degrees, in any order
    (latitudes clipped to [-90, 90], longitudes in any 360° range, widths up to 360°); column
    i * nlon + k is cell (lat row i, lon column k) in the order given.
    """
    lat_lo, lat_hi, lat_order = _sorted_cells(np.clip(lat_bounds, -90.0, 90.0), "latitude")
    lon_lo, lon_hi, _ = _sorted_cells(lon_bounds, "longitude")
    if np.any(lon_hi - lon_lo > 360.0 + 1e-9):
        raise ValueError("a longitude cell is wider than 360 degrees")
    edges = VoronoiEdges(grid)
    n = len(np.asarray(grid.xyz))
    nlat, nlon = lat_lo.size, lon_lo.size
    z_lo_all, z_hi_all = np.sin(np.deg2rad(lat_lo)), np.sin(np.deg2rad(lat_hi))
    z_lo_all[lat_lo <= -90.0] = -1.0
    z_hi_all[lat_hi >= 90.0] = 1.0
    row_z_lo, row_z_hi = z_lo_all[lat_order], z_hi_all[lat_order]
    a_all = np.deg2rad(lon_lo)
    b_all = a_all + np.deg2rad(lon_hi - lon_lo)
    r0, r1, pair_vertex, pair_col = _candidates(edges, n, row_z_lo, row_z_hi, a_all, b_all)

    rows_out, cols_out, vals_out = [], [], []
    for sl in _chunks(np.maximum(r1 - r0, 0)[pair_vertex]):
        result = _pairs_overlap(edges, pair_vertex[sl], pair_col[sl], r0, r1, row_z_lo, row_z_hi,
                                a_all, b_all)
        if result is None:
            continue
        vertex, sorted_row, col, value = result
        rows_out.append(vertex)
        cols_out.append(lat_order[sorted_row] * nlon + col)
        vals_out.append(value)
    if not rows_out:
        return scipy.sparse.csr_matrix((n, nlat * nlon))
    rows, cols, vals = (np.concatenate(x) for x in (rows_out, cols_out, vals_out))
    cell_area = ((z_hi_all[:, None] - z_lo_all[:, None]) * (b_all - a_all)[None, :]).reshape(-1)
    keep = vals > _DROP * cell_area[cols]
    matrix = scipy.sparse.coo_matrix((vals[keep], (rows[keep], cols[keep])), (n, nlat * nlon)).tocsr()
    matrix.sum_duplicates()
    return matrix


def _candidates(
    edges: VoronoiEdges, n: int, row_z_lo: np.ndarray, row_z_hi: np.ndarray, a_all: np.ndarray, b_all: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(r0, r1) per vertex: its candidate rows (in sorted order); (pair_vertex, pair_col): its
    candidate columns, from the bounding box of its Voronoi cell (rows by sin-latitude band,
    columns by longitude, in two ranges around the seam)."""
    tallest = float((row_z_hi - row_z_lo).max())
    start_mod = np.mod(a_all, TWO_PI)
    col_order = np.argsort(start_mod, kind="stable")
    col_start = start_mod[col_order]
    widest = float((b_all - a_all).max())
    lon_min, lon_max, zmin, zmax, polar = edges.cell_extents()
    # candidate rows: sorted by lower edge, lower edge in (zmin - tallest, zmax)
    r0 = np.searchsorted(row_z_lo, zmin - tallest, side="right")
    r1 = np.searchsorted(row_z_lo, zmax, side="left")
    # candidate columns: start (mod 2π) in (lon_min - widest, lon_max]
    lo_mod = np.mod(lon_min - widest, TWO_PI)
    span = np.where(polar, TWO_PI, np.minimum(lon_max - lon_min + widest, TWO_PI))
    c0 = np.searchsorted(col_start, lo_mod, side="left")
    c1 = np.searchsorted(col_start, lo_mod + span, side="right")
    wrap_end = np.minimum(np.searchsorted(col_start, lo_mod + span - TWO_PI, side="right"), c0)
    vert_a, col_a = _ranges(c0, c1 - c0)
    vert_b, col_b = _ranges(np.zeros(n, np.int64), wrap_end)
    return r0, r1, np.concatenate([vert_a, vert_b]), col_order[np.concatenate([col_a, col_b])]


def _chunks(per_pair: np.ndarray) -> list[slice]:
    """Consecutive slices of the pairs with about `_CHUNK` (pair, row) candidates each (bounded memory)."""
    bounds = np.concatenate([[0], np.cumsum(per_pair)])
    slices, begin = [], 0
    while begin < per_pair.size:
        end = max(int(np.searchsorted(bounds, bounds[begin] + max(1, _CHUNK), side="right")) - 1, begin + 1)
        slices.append(slice(begin, min(end, per_pair.size)))
        begin = slices[-1].stop
    return slices


def _pairs_overlap(
    edges: VoronoiEdges, pair_vertex: np.ndarray, pair_col: np.ndarray, r0: np.ndarray, r1: np.ndarray,
    row_z_lo: np.ndarray, row_z_hi: np.ndarray, a_all: np.ndarray, b_all: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Overlaps of the (vertex, column) pairs with each of the vertex's candidate rows."""
    a, b = a_all[pair_col], b_all[pair_col]
    eid = edges.edge_id[pair_vertex]  # [P, 6]
    valid = edges.valid[pair_vertex]
    sign = np.where(edges.forward[pair_vertex], -1.0, 1.0) * np.sign(edges.dlon[eid])
    # the edge's longitude interval, moved to the branch of the column's midpoint
    lon0, dlon = edges.lon0[eid], edges.dlon[eid]
    mid = lon0 + 0.5 * dlon
    shift = TWO_PI * np.round(((0.5 * (a + b))[:, None] - mid) / TWO_PI)
    e_lo = lon0 + shift + np.minimum(dlon, 0.0)
    e_hi = lon0 + shift + np.maximum(dlon, 0.0)
    alpha = np.maximum(e_lo, a[:, None])
    beta = np.minimum(e_hi, b[:, None])
    meets = valid & (beta > alpha)
    # z range of the edge over [α, β]
    normal = edges.normal[eid]
    z_a, z_b = _z_on_circle(normal, alpha), _z_on_circle(normal, beta)
    sub_lo, sub_hi = np.minimum(z_a, z_b), np.maximum(z_a, z_b)
    width = beta - alpha
    mu, rho = edges.mu[eid], edges.rho[eid]
    sub_hi = np.where(np.mod(mu + np.pi - alpha, TWO_PI) < width, rho, sub_hi)
    sub_lo = np.where(np.mod(mu - alpha, TWO_PI) < width, -rho, sub_lo)

    vertex = pair_vertex
    pole_north = vertex == edges.poles[0]
    trip, row = _ranges(r0[vertex], r1[vertex] - r0[vertex])
    if trip.size == 0:
        return None
    zl, zh = row_z_lo[row], row_z_hi[row]
    t_meets = meets[trip]
    above = t_meets & (sub_lo[trip] >= zh[:, None])
    crossing = t_meets & ~above & (sub_hi[trip] > zl[:, None])
    t_sign, t_width = sign[trip], width[trip]
    value = np.where(above, t_sign * (zh - zl)[:, None] * t_width, 0.0).sum(axis=1)
    value += np.where(pole_north[trip], (zh - zl) * (b - a)[trip], 0.0)
    which, slot = np.nonzero(crossing)
    if which.size:
        pair = trip[which]
        e = eid[pair, slot]
        exact = clipped_integral(edges.normal[e], edges.rho[e], edges.mu[e], alpha[pair, slot], beta[pair, slot],
                                 zl[which], zh[which])
        value += np.bincount(which, sign[pair, slot] * exact, minlength=trip.size)
    return vertex[trip], row, pair_col[trip], value
