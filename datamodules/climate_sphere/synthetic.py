"""SYNTHETIC files in the climate_sphere_l5 format (for tests and smoke runs; never real data).

Every file is marked: its name is `data-SYNTHETIC-<n>-mesh.npz`, it carries `synthetic=True`,
and the folder gets a SYNTHETIC_README.txt. Values are known functions of latitude and longitude
(`analytic_fields`) at the rebuilt UGSCNN vertex positions (`datamodules.climate_sphere.mesh`), so a test
can evaluate the same functions on `IcoGrid` and check that every value landed on the right
vertex. Surface pressure has deep lows over Tibet, the Altiplano and Antarctica, so the files
pass the terrain check; labels are spherical caps (a cyclone, a river) that move with the step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.climate_sphere.files import CHANNELS, LEVEL, SPLITS
from datamodules.climate_sphere.mesh import geographic_latlon, ugscnn_icosphere
from icolightning.classes import NUM_CLASSES

_LOWS = ((32.5, 89.0, 8.0, 42000.0), (-18.5, 291.5, 7.0, 30000.0))
"""(lat, lon, radius in degrees, depth in Pa) of the Gaussian surface pressure lows."""


def _angular_distance(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> np.ndarray:
    """Great-circle distance in degrees."""
    p, p0, dl = np.deg2rad(lat), np.deg2rad(lat0), np.deg2rad(lon - lon0)
    cos = np.sin(p) * np.sin(p0) + np.cos(p) * np.cos(p0) * np.cos(dl)
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def analytic_fields(lat: np.ndarray, lon: np.ndarray, step: int) -> np.ndarray:
    """[16, N] float64: the synthetic value of every channel at (lat, lon) degrees for sample `step`."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    phase = 0.37 * step
    out = np.empty((len(CHANNELS), len(lat)))
    for c in range(len(CHANNELS)):  # a distinct pattern per channel, smooth on the sphere (poles included)
        k = 1 + c % 3
        out[c] = 10.0 * (c + 1) + (c + 2) * np.sin(phi) + np.cos(phi) ** k * np.cos(k * lam - phase - c)
    ps = 101000.0 + 800.0 * np.cos(phi) * np.sin(lam + phase)
    for lat0, lon0, radius, depth in _LOWS:
        ps -= depth * np.exp(-((_angular_distance(lat, lon, lat0, lon0) / radius) ** 2))
    ps -= 38000.0 / (1.0 + np.exp((lat + 76.0) / 4.0))
    out[CHANNELS.index("PS")] = ps
    out[CHANNELS.index("PSL")] = 101300.0 - 800.0 * np.sin(phi) ** 2 + 1500.0 * np.cos(phi) * np.cos(lam - phase)
    out[CHANNELS.index("T500")] = 262.0 - 25.0 * np.sin(phi) ** 2 + 2.0 * np.cos(phi) * np.sin(lam + phase)
    out[CHANNELS.index("Z200")] = 11900.0 - 1500.0 * np.sin(phi) ** 2 + 80.0 * np.cos(phi) ** 2 * np.cos(2 * lam)
    return out


def analytic_labels(lat: np.ndarray, lon: np.ndarray, step: int) -> np.ndarray:
    """[N] int64: 1 (TC) inside a 6° cap in the tropics, 2 (AR) inside a 12° cap, else 0."""
    labels = np.zeros(len(lat), dtype=np.int64)
    labels[_angular_distance(lat, lon, 40.0, (150.0 + 47.0 * step) % 360.0) < 12.0] = 2
    labels[_angular_distance(lat, lon, 15.0, (30.0 + 61.0 * step) % 360.0) < 6.0] = 1
    return labels


def generate_sphere_dataset(out_dir: str | Path, n_train: int = 8, n_val: int = 4, n_test: int = 4) -> list[Path]:
    """Write SYNTHETIC npz files and the three split lists into `out_dir`; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lat, lon = geographic_latlon(ugscnn_icosphere(LEVEL)[0]).T
    written, step = [], 0
    for split, count in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        names = []
        for _ in range(count):
            name = f"data-SYNTHETIC-{step:05d}-mesh.npz"
            onehot = np.eye(NUM_CLASSES, dtype=np.float32)[analytic_labels(lat, lon, step)].T
            np.savez(out / name, data=analytic_fields(lat, lon, step).astype(np.float32), labels=onehot,
                     synthetic=True)
            names.append(name)
            written.append(out / name)
            step += 1
        (out / f"{split}_split.txt").write_text("".join(f"{n}\n" for n in names))
    (out / "SYNTHETIC_README.txt").write_text(
        "SYNTHETIC data in the climate_sphere_l5 format, made by datamodules.climate_sphere.synthetic: analytic fields "
        "and cap labels, not model output. Never report results on it as results on real data.\n")
    return written
