"""Reading the papers' level-5 climate files (`data-*-mesh.npz`), checking their vertex order, and
mapping them onto `IcoGrid`.

A file holds `data` float32 [16, 10242] (channels first, `VARIABLES` order) and `labels` one-hot
[3, 10242] in the order of `datamodules.climate_sphere.mesh`. No script that made these files is public,
so every file is checked before it is used (`check_vertex_order`):

* smoothness: across mesh edges, Z200, T500 and PSL differ far less than across random vertex
  pairs (a shuffled or differently ordered file gives a ratio near 1);
* terrain: surface pressure PS averaged over Tibet, the Altiplano and the Antarctic plateau is
  below the global 20th percentile (a 180° longitude shift moves Tibet and the Andes over the
  ocean; a latitude flip moves all three).

The two grids are not the same point set: UGSCNN projects after every subdivision, `IcoGrid` once
from flat faces, and UGSCNN's upper ring sits at geographic longitude 54° + 72k, `IcoGrid`'s at
72k. Only the poles coincide, so fields are interpolated barycentrically inside the UGSCNN
triangles and labels take the nearest UGSCNN vertex (`SphereToIco`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from datamodules.climate_sphere.mesh import geographic_latlon, geographic_xyz, ugscnn_icosphere
from datamodules.climatenet.schema import VARIABLES
from datamodules.regrid import RegridMatrix, locate_in_triangles, matrix_from_triplets
from icolightning.classes import NUM_CLASSES
from icolightning.errors import DataFileError
from icolightning.grid import IcoGrid, vertex_count

LEVEL = 5
NUM_VERTICES = vertex_count(LEVEL)
CHANNELS: tuple[str, ...] = tuple(VARIABLES)
SPLITS = ("train", "val", "test")
SMOOTH_CHANNELS = ("Z200", "T500", "PSL")
MAX_EDGE_RATIO = 0.3
"""Mean |difference| across edges / across random pairs above which a file is refused."""
TERRAIN_QUANTILE = 0.2
HIGH_TERRAIN: dict[str, tuple[float, float, float, float]] = {
    "Tibetan plateau": (29.0, 36.0, 80.0, 98.0),
    "Andes (Altiplano)": (-22.0, -15.0, 289.0, 294.0),
    "Antarctic plateau": (-90.0, -75.0, 0.0, 360.0),
}
"""Region -> (lat_min, lat_max, lon_min, lon_max), degrees, longitude in [0, 360)."""


def split_list(data_dir: str | Path, split: str) -> list[Path]:
    """The files named in `data_dir/{split}_split.txt` (bare file names, one per line)."""
    listing = Path(data_dir) / f"{split}_split.txt"
    if not listing.is_file():
        raise DataFileError(listing, f"split list not found (data.data_dir must hold {split}_split.txt "
                                       "and the data-*-mesh.npz files it names)")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DataFileError(listing, "the split list is empty")
    files = [Path(data_dir) / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataFileError(listing, f"{len(missing)} listed files are missing from {data_dir}, "
                                       f"e.g. {missing[:3]}")
    return files


def read_sample(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(fields float32 [16, 10242], labels uint8 [10242]) of one npz file; labels = argmax of the one-hot."""
    try:
        with np.load(path) as npz:
            if "data" not in npz.files or "labels" not in npz.files:
                raise DataFileError(path, f"expected keys 'data' and 'labels', found {npz.files}")
            data, onehot = npz["data"], npz["labels"]
    except DataFileError:
        raise
    except Exception as exc:
        raise DataFileError(path, f"unreadable ({type(exc).__name__}: {exc})") from exc
    if data.shape != (len(CHANNELS), NUM_VERTICES):
        raise DataFileError(path, f"'data' is {data.shape}, expected ({len(CHANNELS)}, {NUM_VERTICES})")
    if onehot.shape != (NUM_CLASSES, NUM_VERTICES):
        raise DataFileError(path, f"'labels' is {onehot.shape}, expected ({NUM_CLASSES}, {NUM_VERTICES})")
    return data.astype(np.float32, copy=False), np.argmax(onehot, axis=0).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _mesh_pairs() -> tuple[np.ndarray, np.ndarray]:
    """The mesh edges of the UGSCNN level-5 sphere and as many random vertex pairs (fixed seed)."""
    _, faces = ugscnn_icosphere(LEVEL)
    edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1), axis=0)
    random_pairs = np.random.default_rng(0).integers(0, NUM_VERTICES, size=edges.shape)
    return edges, random_pairs


def smoothness_ratio(values: np.ndarray) -> float:
    """Mean |difference| across mesh edges over mean |difference| across random vertex pairs."""
    edges, random_pairs = _mesh_pairs()
    values = np.asarray(values, dtype=np.float64)
    across_edges = np.abs(values[edges[:, 0]] - values[edges[:, 1]]).mean()
    across_random = np.abs(values[random_pairs[:, 0]] - values[random_pairs[:, 1]]).mean()
    return float(across_edges / across_random) if across_random > 0 else float("inf")


@functools.lru_cache(maxsize=1)
def _region_masks() -> dict[str, np.ndarray]:
    lat, lon = geographic_latlon(ugscnn_icosphere(LEVEL)[0]).T
    return {name: (lat >= a) & (lat <= b) & (lon >= c) & (lon <= d) for name, (a, b, c, d) in HIGH_TERRAIN.items()}


def terrain_pressure(surface_pressure: np.ndarray) -> tuple[dict[str, float], float]:
    """Mean PS over each high-terrain region, and the global `TERRAIN_QUANTILE` of PS."""
    ps = np.asarray(surface_pressure, dtype=np.float64)
    return {name: float(ps[mask].mean()) for name, mask in _region_masks().items()}, float(
        np.quantile(ps, TERRAIN_QUANTILE))


def check_vertex_order(fields: np.ndarray, path: str | Path) -> None:
    """Refuse a file whose values are not in the rebuilt UGSCNN vertex order (see the module doc)."""
    for name in SMOOTH_CHANNELS:
        ratio = smoothness_ratio(fields[CHANNELS.index(name)])
        if not ratio < MAX_EDGE_RATIO:
            raise DataFileError(
                path, f"vertex order check failed: {name} differs across mesh edges {ratio:.2f} times as much as "
                f"across random vertex pairs (a file in the expected order gives << {MAX_EDGE_RATIO}); the values "
                "are not in UGSCNN's level-5 icosphere order. Re-project the original data instead (README, "
                "'Reproducing the published table').")
    regions, threshold = terrain_pressure(fields[CHANNELS.index("PS")])
    high = {name: value for name, value in regions.items() if not value < threshold}
    if high:
        found = ", ".join(f"{name} {value:.6g}" for name, value in high.items())
        raise DataFileError(
            path, f"vertex order check failed: surface pressure PS is not low over high terrain ({found}; global "
            f"{TERRAIN_QUANTILE:.0%} quantile {threshold:.6g}). The longitudes look shifted (e.g. by 180°) or the "
            "latitudes flipped against the convention lon = atan2(y, x) + 180°. Re-project the original data "
            "instead (README, 'Reproducing the published table').")


@dataclass(frozen=True)
class SphereToIco:
    """UGSCNN level-5 vertex values -> `IcoGrid(level)` vertex values.

    `fields` interpolates barycentrically in the UGSCNN triangle around each target; `nearest`
    gives each target's closest UGSCNN vertex (for labels); `distance_deg` its angular distance.
    """

    fields: RegridMatrix
    nearest: np.ndarray
    distance_deg: np.ndarray

    def apply(self, fields: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([..., C, 10242], [..., 10242]) -> ([..., C, N], [..., N])."""
        return self.fields.apply(fields).astype(np.float32, copy=False), np.asarray(labels)[..., self.nearest]


def _triangles_around_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per vertex, the (at most 6) faces touching it: inverse vertex matrices and corner ids (-1: none).

    Solving [A B C] λ = p gives the gnomonic barycentric coordinates of p in a face (the layout
    `datamodules.regrid.locate_in_triangles` searches).
    """
    slots = np.full((len(vertices), 6), -1, dtype=np.int64)
    fill = np.zeros(len(vertices), dtype=np.int64)
    for f, face in enumerate(faces):
        for v in face:
            slots[v, fill[v]] = f
            fill[v] += 1
    corners = np.where(slots[..., None] >= 0, faces[slots], -1)
    mats = np.swapaxes(vertices[np.maximum(corners, 0)], -1, -2)
    mats[slots < 0] = np.eye(3)
    return np.linalg.inv(mats), corners


@functools.lru_cache(maxsize=4)
def sphere_to_ico(level: int = LEVEL) -> SphereToIco:
    """The mapping onto `IcoGrid(level)`, built from the geometry of both grids.

    UGSCNN's sphere projects its vertices after every subdivision (geodesic midpoints), `IcoGrid`
    only once (flat faces), and the two are turned against each other about z: no vertex but the
    poles coincides, so fields are interpolated inside the UGSCNN triangle around each target.
    """
    raw, faces = ugscnn_icosphere(LEVEL)
    source = geographic_xyz(raw)
    target = IcoGrid(level).xyz
    inverses, corners = _triangles_around_vertices(source, np.asarray(faces))
    tree = cKDTree(source)
    distance, nearest = tree.query(target)
    ids, lam = locate_in_triangles(target, nearest[:, None], inverses, corners)
    lost = np.flatnonzero(lam.min(axis=1) < -1e-9)
    if lost.size:
        ids[lost], lam[lost] = locate_in_triangles(target[lost], tree.query(target[lost], k=4)[1], inverses, corners)
    if (lam.min(axis=1) < -1e-9).any():
        raise RuntimeError("could not locate some IcoGrid vertices in UGSCNN's mesh")
    lam = np.clip(lam, 0.0, None)
    lam /= lam.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(len(target)), 3)
    weights = matrix_from_triplets([rows], [ids.reshape(-1)], [lam.reshape(-1)], (len(target), len(source)))
    angle = np.rad2deg(2 * np.arcsin(np.clip(distance / 2, 0.0, 1.0)))
    return SphereToIco(weights, nearest.astype(np.int64), angle)
