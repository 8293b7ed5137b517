"""The example maps of docs/outputs.md, from hand-made caps (two TCs, one across the date line;
an AR band and a polar cap): `python scripts/make_map_examples.py docs/images`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from icolightning.events.plots import save_frequency_maps
from icolightning.grid import IcoGrid
from icolightning.plots import save_latlon_prediction_map, save_mask_maps

CLASSES = ["BG", "TC", "AR"]


def caps(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    labels = np.zeros(lat.shape, dtype=np.int64)

    def distance(lat0: float, lon0: float) -> np.ndarray:
        return np.hypot(lat - lat0, (np.mod(lon - lon0 + 180, 360) - 180) * np.cos(np.deg2rad(lat0)))

    labels[distance(20, 355) < 8] = 1
    labels[distance(-15, 150) < 6] = 1
    labels[(np.abs(lat - 40) < 4) & (np.mod(lon - 200, 360) < 60)] = 2
    labels[lat > 84] = 2
    return labels


def main(out: Path) -> None:
    grid = IcoGrid(4)
    lat, lon = grid.latlon.T
    field = np.cos(np.deg2rad(lat)) * 50 + 5 * np.sin(np.deg2rad(3 * lon))
    save_mask_maps(out / "map_vertex_masks.png", grid.latlon, caps(lat, lon), CLASSES, truth=caps(lat, lon + 3),
                   background=field, title="vertex masks (level 4) over a vertex field")
    grid_lat, grid_lon = np.linspace(-90, 90, 121), np.arange(-180.0, 180.0, 1.5)
    mesh_lat, mesh_lon = np.meshgrid(grid_lat, grid_lon, indexing="ij")
    probability = 0.4 + 0.6 * np.random.default_rng(0).random(mesh_lat.shape)
    save_latlon_prediction_map(out / "map_latlon_prediction.png", grid_lat, grid_lon, caps(mesh_lat, mesh_lon),
                               CLASSES, probability, np.cos(np.deg2rad(mesh_lat)) * 50,
                               "lat-lon prediction (-180..180 grid), opacity = probability")
    labels = caps(lat, lon)
    save_frequency_maps(out / "map_vertex_frequency.png", "vertex", lat, lon,
                        np.stack([0.5 * (labels == 1), 1.0 * (labels == 2)]), ["TC", "AR"])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
