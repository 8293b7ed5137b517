"""The vertex order of the papers' level-5 climate dataset ("climate_sphere_l5", Jiang et al. 2019).

The preprocessed npz files store 10 242 values per channel in the order of UGSCNN's icosphere
generator with its "upward" rotation. This module rebuilds that order from the published
algorithm (written here; no UGSCNN code copied):

1. the 12 icosahedron corners (±1, ±t, 0), (0, ±1, ±t), (±t, 0, ±1) / √(1+t²), t the golden
   ratio, in UGSCNN's index order (`_CORNERS`);
2. the "upward" rotation: corner 11 to the north pole (corner 8 then sits at the south pole),
   and about z so that the upper ring (corners 10, 2, 4, 5, 0) lies at atan2 longitudes
   18°, 90°, 162°, −126°, −54°;
3. per level: the midpoint (a+b)/2 of every edge, keyed per coordinate as
   int32(round(1e8·m − 1e-6)), sorted by the 12-byte little-endian key compared as unsigned bytes
   (memcmp order: least significant byte of x first, not numeric order), appended after the
   existing vertices; then every vertex is projected onto the unit sphere.

The projection happens after *each* subdivision: projecting only once at the end gives another
order (the reference checksums below decide; `tests/test_ugscnn_mesh.py` checks them).
Geographic longitude in the papers' plots is atan2(y, x) + 180° (`geographic_latlon`).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

GOLDEN = (1.0 + 5.0**0.5) / 2.0
_CORNERS = np.array(
    [(-1, GOLDEN, 0), (1, GOLDEN, 0), (-1, -GOLDEN, 0), (1, -GOLDEN, 0),
     (0, -1, GOLDEN), (0, 1, GOLDEN), (0, -1, -GOLDEN), (0, 1, -GOLDEN),
     (GOLDEN, 0, -1), (GOLDEN, 0, 1), (-GOLDEN, 0, -1), (-GOLDEN, 0, 1)],
    dtype=np.float64,
) / np.sqrt(1.0 + GOLDEN**2)
"""UGSCNN's 12 corners in its index order, on the unit sphere."""

NORTH_CORNER, SOUTH_CORNER, RING_CORNER = 11, 8, 0
RING_CORNER_LON = -54.0
"""atan2 longitude (degrees) of corner 0 after the upward rotation; fixes the turn about z."""

CHECKSUMS: dict[tuple[int, bool], str] = {
    (5, True): "ae339b105a26f7035ab760cf2abad875f197ac7a",
    (5, False): "d69deb54f89f51306430b4065e1bb96829ac5abf",
}
"""(level, upward) -> `vertex_checksum` of the reference order (from the dataset's description)."""


def _frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows: a, the part of b orthogonal to a, their cross product (all unit)."""
    e1 = a / np.linalg.norm(a)
    e2 = b - e1 * (e1 @ b)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)])


def upward_rotation() -> np.ndarray:
    """The 3x3 rotation taking corner 11 to the north pole and corner 0 to longitude −54°."""
    lat, lon = np.arctan(0.5), np.deg2rad(RING_CORNER_LON)
    ring_target = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    target = _frame(np.array([0.0, 0.0, 1.0]), ring_target)
    return target.T @ _frame(_CORNERS[NORTH_CORNER], _CORNERS[RING_CORNER])


def _corner_faces(corners: np.ndarray) -> np.ndarray:
    """The 20 triangles of mutually adjacent corners (edges are the shortest corner distances)."""
    dist = np.linalg.norm(corners[:, None] - corners[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    adjacent = dist <= dist.min() * (1 + 1e-9)
    faces = [(a, b, c) for a in range(12) for b in range(a + 1, 12) for c in range(b + 1, 12)
             if adjacent[a, b] and adjacent[b, c] and adjacent[a, c]]
    return np.array(faces, dtype=np.int64)


def _midpoint_keys(points: np.ndarray) -> np.ndarray:
    """[M, 12] uint8: the little-endian bytes of int32(round(1e8·m − 1e-6)) per coordinate."""
    keys = np.round(1e8 * points - 1e-6).astype("<i4")
    return np.ascontiguousarray(keys).view(np.uint8).reshape(len(points), 12)


def _subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One level: edge midpoints appended in key byte order, each face split into 4, then projected."""
    n = len(vertices)
    pairs = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    edges = np.unique(pairs, axis=0)
    midpoints = (vertices[edges[:, 0]] + vertices[edges[:, 1]]) / 2
    key = _midpoint_keys(midpoints)
    order = np.lexsort(key.T[::-1])
    if (key[order][1:] == key[order][:-1]).all(axis=1).any():
        raise RuntimeError("two edge midpoints share a key; the mesh is degenerate")
    new_index = np.empty(len(edges), dtype=np.int64)
    new_index[order] = n + np.arange(len(edges))
    edge_code = edges[:, 0] * n + edges[:, 1]

    def midpoint_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        code = np.minimum(a, b) * n + np.maximum(a, b)
        return new_index[np.searchsorted(edge_code, code)]

    a, b, c = faces.T
    ab, bc, ca = midpoint_of(a, b), midpoint_of(b, c), midpoint_of(c, a)
    new_faces = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    merged = np.concatenate([vertices, midpoints[order]])
    return merged / np.linalg.norm(merged, axis=1, keepdims=True), new_faces


@functools.lru_cache(maxsize=8)
def ugscnn_icosphere(level: int, upward: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [10·4^level + 2, 3] (unit, float64) and faces [20·4^level, 3] in UGSCNN's order.

    Arrays are shared between calls and read-only.
    """
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    vertices = _CORNERS @ upward_rotation().T if upward else _CORNERS.copy()
    faces = _corner_faces(_CORNERS)
    for _ in range(level):
        vertices, faces = _subdivide(vertices, faces)
    vertices.setflags(write=False)
    faces.setflags(write=False)
    return vertices, faces


def vertex_checksum(vertices: np.ndarray) -> str:
    """sha1 of the coordinates rounded to 1e-6 as little-endian int64 (C order)."""
    return hashlib.sha1(np.round(np.asarray(vertices) * 1e6).astype("<i8").tobytes()).hexdigest()


def geographic_latlon(vertices: np.ndarray) -> np.ndarray:
    """[N, 2] latitude and longitude (degrees, [0, 360)) in the dataset's convention: atan2(y, x) + 180°."""
    x, y, z = np.asarray(vertices, dtype=np.float64).T
    lat = np.rad2deg(np.arcsin(np.clip(z, -1.0, 1.0)))
    lon = np.mod(np.rad2deg(np.arctan2(y, x)) + 180.0, 360.0)
    return np.stack([lat, lon], axis=1)


def geographic_xyz(vertices: np.ndarray) -> np.ndarray:
    """The vertices turned into the geographic frame (longitude atan2 + 180°: a half turn about z)."""
    return np.asarray(vertices, dtype=np.float64) * np.array([-1.0, -1.0, 1.0])
