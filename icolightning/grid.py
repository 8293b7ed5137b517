"""The subdivided icosahedron: vertices, the 5-chart atlas, gauge frames and the 60 rotations.

Everything here is derived from 3-D geometry (flat face positions projected to the sphere, mesh
adjacency, tangent-plane angles), never from hand-written tables, so the tests can check it
against the same geometry.

Canonical vertex order (used by every tensor in the project): chart 0 row-major over (h, w),
then charts 1..4, then the north pole, then the south pole. Chart pixel (h, w) of chart c sits
at skew lattice point (i, j) = (2^r - h, w) of the chart's parallelogram, so level r-1 vertices
are exactly the level-r vertices at even (h, w) and frames agree across levels.

Hex directions in chart coordinates, counter-clockwise seen from outside the sphere, starting
at the gauge frame (the chart's w axis): k = 0..5 -> (dh, dw) in HEX_OFFSETS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.spatial import cKDTree

NUM_CHARTS = 5
ORIENTATIONS = 6
NUM_CORNERS = 12
"""The 12 degree-5 vertices, in `IcoGrid.corners` order: the chart corners first, then the poles."""
CHART_CORNERS = 10
"""Corners inside the charts (two per chart): slots 0-9 of every 12-corner table."""
NUM_POLES = NUM_CORNERS - CHART_CORNERS
"""North and south pole: slots 10 and 11, outside every chart."""
CORNER_NEIGHBOURS = 5
"""Neighbours of a corner (its degree)."""
HEX_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 0), (0, -1), (-1, -1), (-1, 0))
"""(dh, dw) of the six hex neighbours, counter-clockwise from the frame direction."""

MAX_LEVEL = 9
NUM_CORNERS = 12
"""The icosahedron's own vertices: 10 chart corners (two per chart) and the 2 poles."""
NUM_POLES = 2
ArrayLike = TypeVar("ArrayLike")
"""A torch tensor or a numpy array: the layout helpers work on both and return the same kind."""


def vertex_count(level: int) -> int:
    """N(r) = 10·4^r + 2: the one place the vertex-count formula is written."""
    return 10 * 4**level + 2


def level_of(num_vertices: int) -> int:
    """The level r with N(r) = num_vertices (a ValueError for any other count)."""
    for level in range(32):
        if vertex_count(level) == num_vertices:
            return level
    raise ValueError(f"{num_vertices} is not an icosahedral vertex count 10·4^r + 2")


def _icosahedron_corners() -> np.ndarray:
    """The 12 corners: north pole, upper ring (lon 72k), lower ring (lon 72k+36), south pole."""
    lat = np.arctan(0.5)
    ring = []
    for offset, z_sign in ((0.0, 1.0), (36.0, -1.0)):
        lon = np.deg2rad(offset + 72.0 * np.arange(5))
        ring.append(np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon),
                              z_sign * np.sin(lat) * np.ones(5)], axis=1))
    return np.concatenate([[[0.0, 0.0, 1.0]], ring[0], ring[1], [[0.0, 0.0, -1.0]]])


def _chart_lattice_xyz(level: int) -> np.ndarray:
    """Unit vectors of every lattice point (c, i, j), i in [0, n], j in [0, 2n], n = 2^level.

    Chart c is the strip of faces (N, u_c, u_c+1), (u_c, u_c+1, l_c), (u_c+1, l_c, l_c+1),
    (l_c, l_c+1, S) unfolded as a parallelogram with N at (0, 0), u_c at (n, 0), u_c+1 at (0, n),
    l_c at (n, n), l_c+1 at (0, 2n) and S at (n, 2n). Points are placed linearly on the flat
    faces and then projected, which is what makes the vertex set invariant under the 60 rotations.
    """
    corners = _icosahedron_corners()
    north, south = corners[0], corners[11]
    n = 2**level
    i = np.arange(n + 1, dtype=np.float64)[:, None] / n
    j = np.arange(2 * n + 1, dtype=np.float64)[None, :] / n
    s, t = np.broadcast_arrays(i, j)
    out = np.empty((NUM_CHARTS, n + 1, 2 * n + 1, 3))
    for c in range(NUM_CHARTS):
        uc, uc1 = corners[1 + c], corners[1 + (c + 1) % 5]
        lc, lc1 = corners[6 + c], corners[6 + (c + 1) % 5]
        t2 = t - 1.0
        faces = [
            (t <= 1) & (s + t <= 1),
            (t <= 1) & (s + t > 1),
            (t > 1) & (s + t2 <= 1),
            (t > 1) & (s + t2 > 1),
        ]
        positions = [
            north + s[..., None] * (uc - north) + t[..., None] * (uc1 - north),
            lc + (1 - t)[..., None] * (uc - lc) + (1 - s)[..., None] * (uc1 - lc),
            uc1 + s[..., None] * (lc - uc1) + t2[..., None] * (lc1 - uc1),
            south + (1 - t2)[..., None] * (lc - south) + (1 - s)[..., None] * (lc1 - south),
        ]
        flat = np.select([m[..., None] for m in faces], positions)
        out[c] = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
    return out


def _ccw_rings(xyz: np.ndarray, triangles: np.ndarray) -> list[np.ndarray]:
    """Neighbours of every vertex sorted counter-clockwise around the outward normal."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    edges = np.unique(edges, axis=0)
    order = np.argsort(edges[:, 0], kind="stable")
    edges = edges[order]
    starts = np.searchsorted(edges[:, 0], np.arange(len(xyz) + 1))
    normal = xyz[edges[:, 0]]
    helper = np.where(np.abs(normal[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(helper, normal)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(normal, e1)
    d = xyz[edges[:, 1]] - normal
    angle = np.arctan2((d * e2).sum(1), (d * e1).sum(1))
    rings = []
    for v in range(len(xyz)):
        lo, hi = starts[v], starts[v + 1]
        rings.append(edges[lo:hi, 1][np.argsort(angle[lo:hi])])
    return rings


@dataclass(frozen=True)
class _Geometry:
    level: int
    xyz: np.ndarray
    lattice_vertex: np.ndarray
    """[5, n+1, 2n+1] vertex id of every closed-parallelogram lattice point."""
    ring: np.ndarray
    """[N, 6] counter-clockwise neighbours; corners repeat their first neighbour in slot 5."""
    degree: np.ndarray
    frame: np.ndarray
    """[N] ring slot of the frame (direction 0) neighbour; 0 for corners."""
    corners: np.ndarray


@functools.lru_cache(maxsize=MAX_LEVEL + 1)
def _geometry(level: int) -> _Geometry:
    n = 2**level
    lattice = _chart_lattice_xyz(level)
    h_idx, w_idx = np.meshgrid(np.arange(n), np.arange(2 * n), indexing="ij")
    owned = lattice[:, n - h_idx, w_idx].reshape(-1, 3)
    xyz = np.concatenate([owned, [[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]])
    tree = cKDTree(xyz)
    dist, ids = tree.query(lattice.reshape(-1, 3))
    spacing = 0.5 / n
    if dist.max() > 1e-3 * spacing:
        raise RuntimeError(f"level {level}: chart lattice does not close up (gap {dist.max():.2e})")
    lattice_vertex = ids.reshape(lattice.shape[:-1])

    tri = []
    for c in range(NUM_CHARTS):
        lv = lattice_vertex[c]
        a, b = lv[:-1, :-1], lv[1:, :-1]
        cc, d = lv[:-1, 1:], lv[1:, 1:]
        tri.append(np.stack([a, b, cc], -1).reshape(-1, 3))
        tri.append(np.stack([b, d, cc], -1).reshape(-1, 3))
    rings = _ccw_rings(xyz, np.concatenate(tri))
    degree = np.array([len(r) for r in rings])
    if set(np.unique(degree)) - {5, 6} or (degree == 5).sum() != 12:
        raise RuntimeError(f"level {level}: mesh is not an icosahedral subdivision")
    ring = np.array([np.concatenate([r, r[:1]]) if len(r) == 5 else r for r in rings])
    corners = np.flatnonzero(degree == 5)

    frame = np.zeros(len(xyz), dtype=np.int64)
    regular = degree[: NUM_CHARTS * n * 2 * n] == 6
    chart_ids = np.arange(NUM_CHARTS)[:, None, None]
    frame_nb = lattice_vertex[chart_ids, n - h_idx[None], w_idx[None] + 1].reshape(-1)
    slot = np.argmax(ring[: len(frame_nb)] == frame_nb[:, None], axis=1)
    frame[: len(frame_nb)] = np.where(regular, slot, 0)
    return _Geometry(level, xyz, lattice_vertex, ring, degree, frame, corners)


def _rotation_from_pairs(a0: np.ndarray, b0: np.ndarray, a1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """The rotation taking the orthonormal frame built on (a0, b0) to the one built on (a1, b1)."""

    def frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        e2 = b - (b @ a) * a
        e2 /= np.linalg.norm(e2)
        return np.stack([a, e2, np.cross(a, e2)], axis=1)

    return frame(a1, b1) @ frame(a0, b0).T


class IcoGrid:
    """Icosahedral grid of a given level: geometry, chart atlas, gauge frames and symmetries.

    There is one instance per level, so derived tables (rotations, areas) are computed once.
    """

    _instances: dict[int, IcoGrid] = {}  # noqa: RUF012 - the per-level registry is class state

    def __new__(cls, level: int) -> IcoGrid:
        if not isinstance(level, int | np.integer) or not 0 <= level <= MAX_LEVEL:
            raise ValueError(f"IcoGrid level must be an integer in [0, {MAX_LEVEL}], got {level!r}")
        if int(level) not in cls._instances:
            grid = super().__new__(cls)
            grid.level = int(level)
            grid._g = _geometry(grid.level)
            cls._instances[grid.level] = grid
        return cls._instances[int(level)]

    def __reduce__(self) -> tuple[type[IcoGrid], tuple[int]]:
        """Pickle and deep-copy as the level: unpickling (another DDP process, an EMA copy of a model)
        returns that process's one instance, never a second copy of the tables."""
        return IcoGrid, (self.level,)

    def __repr__(self) -> str:
        return f"IcoGrid(level={self.level}, num_vertices={self.num_vertices})"

    # ---------------------------------------------------------------- sizes and positions
    @property
    def num_vertices(self) -> int:
        return vertex_count(self.level)

    @property
    def chart_shape(self) -> tuple[int, int]:
        """(H, W) of one chart: (2^r, 2^(r+1))."""
        return 2**self.level, 2 ** (self.level + 1)

    @property
    def num_chart_vertices(self) -> int:
        return self.num_vertices - 2

    @property
    def pole_ids(self) -> tuple[int, int]:
        """Vertex ids of the north and south pole (the last two in canonical order)."""
        return self.num_vertices - 2, self.num_vertices - 1

    @property
    def xyz(self) -> np.ndarray:
        """[N, 3] float64 unit vectors in canonical vertex order."""
        return self._g.xyz

    @functools.cached_property
    def latlon(self) -> np.ndarray:
        """[N, 2] latitude, longitude in degrees; longitude in [0, 360)."""
        x, y, z = self.xyz.T
        lat = np.rad2deg(np.arcsin(np.clip(z, -1.0, 1.0)))
        lon = np.mod(np.rad2deg(np.arctan2(y, x)), 360.0)
        lon[lon >= 360.0] = 0.0
        lon[np.abs(lat) == 90.0] = 0.0
        return np.stack([lat, lon], axis=1)

    # ---------------------------------------------------------------- topology
    @property
    def corners(self) -> np.ndarray:
        """Vertex ids of the 12 degree-5 vertices (10 chart corners and the 2 poles)."""
        return self._g.corners

    @property
    def degree(self) -> np.ndarray:
        return self._g.degree

    def neighbours(self, vertex: int) -> np.ndarray:
        """Neighbours of a vertex, counter-clockwise seen from outside the sphere."""
        return self._g.ring[vertex, : self._g.degree[vertex]]

    @property
    def ring(self) -> np.ndarray:
        """[N, 6] counter-clockwise neighbours (corners: 5, the first repeated in the last slot)."""
        return self._g.ring

    @property
    def frame_slot(self) -> np.ndarray:
        """[N] slot in `ring` of the gauge-frame neighbour (the chart's w axis); 0 at corners."""
        return self._g.frame

    @property
    def lattice_vertex(self) -> np.ndarray:
        """[5, n+1, 2n+1] vertex id at skew lattice point (c, i, j) of each closed chart."""
        return self._g.lattice_vertex

    def chart_pixel_vertex(self) -> np.ndarray:
        """[5, H, W] vertex id of every chart pixel (equal to arange in canonical order)."""
        h, w = self.chart_shape
        return np.arange(self.num_chart_vertices).reshape(NUM_CHARTS, h, w)

    def chart_corner_pixels(self) -> np.ndarray:
        """[10, 3] (chart, h, w) of the non-pole corners: (c, 0, 0) and (c, 0, W/2)."""
        ids = self.corners[self.corners < self.num_chart_vertices]
        h, w = self.chart_shape
        return np.stack(np.unravel_index(ids, (NUM_CHARTS, h, w)), axis=1)

    @functools.cached_property
    def areas(self) -> np.ndarray:
        """[N] spherical Voronoi cell areas (steradians, summing to 4π)."""
        from scipy.spatial import SphericalVoronoi

        if self.level == 0:
            return np.full(12, 4 * np.pi / 12)
        sv = SphericalVoronoi(self.xyz, radius=1.0)
        return sv.calculate_areas()

    # ---------------------------------------------------------------- layouts
    def to_charts(self, x: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
        """Vertex tensor [..., N] -> (charts [..., 5, H, W], poles [..., 2]); views, no copy."""
        h, w = self.chart_shape
        nc = self.num_chart_vertices
        if x.shape[-1] != self.num_vertices:
            raise ValueError(f"expected last dim {self.num_vertices} (level {self.level}), got {tuple(x.shape)}")
        return x[..., :nc].reshape(*x.shape[:-1], NUM_CHARTS, h, w), x[..., nc:]

    def to_vertices(self, charts: ArrayLike, poles: ArrayLike) -> ArrayLike:
        """(charts [..., 5, H, W], poles [..., 2]) -> vertex tensor [..., N]."""
        flat = charts.reshape(*charts.shape[:-3], self.num_chart_vertices)
        if isinstance(flat, np.ndarray):
            return np.concatenate([flat, poles], axis=-1)
        import torch

        return torch.cat([flat, poles], dim=-1)

    # ---------------------------------------------------------------- symmetries
    @functools.cached_property
    def rotations(self) -> np.ndarray:
        """[60, 3, 3] rotation matrices of the icosahedral group, built from the grid's corners.

        Rotation k maps (north pole, its first neighbouring corner) to one of the 12 x 5 ordered
        pairs of adjacent corners; the identity comes first.
        """
        corner_xyz = _geometry(0).xyz
        ring0 = _geometry(0).ring
        north = IcoGrid(0).pole_ids[0]
        a0, b0 = corner_xyz[north], corner_xyz[ring0[north, 0]]
        mats = []
        for a in range(12):
            for b in ring0[a, :5]:
                mats.append(_rotation_from_pairs(a0, b0, corner_xyz[a], corner_xyz[b]))
        mats = np.array(mats)
        ident = np.argmin(np.abs(mats - np.eye(3)).sum((1, 2)))
        return np.concatenate([mats[ident : ident + 1], np.delete(mats, ident, axis=0)])

    @functools.cached_property
    def rotation_permutations(self) -> np.ndarray:
        """[60, N] int64: perm[g, v] = id of the vertex at R_g · xyz[v].

        A signal x rotated by g^-1 is x[..., perm[g]] ("x∘g"): exact vertex permutations.
        """
        tree = cKDTree(self.xyz)
        perms = []
        for rot in self.rotations:
            dist, idx = tree.query(self.xyz @ rot.T)
            if dist.max() > 1e-9:
                raise RuntimeError(f"rotation does not map the level-{self.level} grid to itself")
            perms.append(idx)
        return np.array(perms)

    @functools.cached_property
    def orientation_shifts(self) -> np.ndarray:
        """[60, N] int64 cyclic shift s such that (x∘g)[v, r] = x[perm[g, v], (r + s[g, v]) % 6].

        It is the number of 60° steps between the frame at g·v and the image under g of the
        frame at v; 0 at the 12 corners, where regular features are orientation-invariant.
        """
        g = self._g
        perms = self.rotation_permutations
        frame_nb = g.ring[np.arange(self.num_vertices), g.frame]
        shifts = np.zeros_like(perms)
        for k, perm in enumerate(perms):
            slot = np.argmax(g.ring[perm] == perm[frame_nb][:, None], axis=1)
            shifts[k] = np.mod(slot - g.frame[perm], ORIENTATIONS)
        shifts[:, g.degree == 5] = 0
        return shifts

    def rotate(self, x: ArrayLike, g: int, regular: bool = False) -> ArrayLike:
        """x∘g for a vertex tensor [..., N] (scalar) or [..., 6, N] (regular)."""
        perm = self.rotation_permutations[g]
        if not regular:
            return x[..., perm]
        import torch

        idx = (np.arange(ORIENTATIONS)[:, None] + self.orientation_shifts[g][None, :]) % ORIENTATIONS
        idx = torch.as_tensor(idx, device=x.device)
        moved = x[..., perm]
        return torch.gather(moved, -2, idx.expand(*moved.shape[:-2], *idx.shape))
