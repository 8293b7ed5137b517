"""Synthetic data in the exact ClimateNet layout, for tests, demos and the default training run.

Nothing here is real model output, and every file says so (`title`, `source`, `synthetic =
"true"`). Each file is one time step on a regular lat-lon grid (latitude -90..90 inclusive,
longitude 0..360 exclusive) with the 16 ClimateNet variables and `LABELS` (0 = background,
1 = tropical cyclone, 2 = atmospheric river) drawn by the generator itself:

* climatology that depends on latitude and season (ITCZ, trades, westerlies, storm tracks),
  plus smooth large-scale noise and a little pixel noise in every variable;
* tropical cyclones: warm-core low-pressure vortices, cyclonic for their hemisphere
  (counter-clockwise in the north), with high TMQ and PRECT;
* atmospheric rivers: long moist filaments from the tropics poleward and eastward, with wind
  along the filament.

Weak events are drawn too and left unlabelled, so a model has to learn an intensity threshold
rather than "any anomaly". Fields are built in the bounding box of each event, which keeps a
96x144 file at a few milliseconds and a full 768x1152 file well under a second.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import netCDF4
import numpy as np

from datamodules.climatenet.schema import VARIABLES
from datamodules.io.atomic import atomic_path
from icolightning.classes import CLASS_NAMES, LABEL_VARIABLE, labels_legend

TRAIN_START = dt.date(1996, 1, 1)
TEST_START = dt.date(2011, 1, 1)
TRAIN_DAYS, TEST_DAYS = 15 * 365, 3 * 365
LABEL_THRESHOLD = 0.35
"""Events weaker than this are drawn into the fields but not labelled."""

# Smooth-noise amplitude and pixel-noise amplitude per variable, in its units.
_NOISE = {
    "TMQ": (4.0, 0.8),
    "U850": (3.0, 0.6),
    "V850": (3.0, 0.6),
    "UBOT": (2.5, 0.5),
    "VBOT": (2.5, 0.5),
    "QREFHT": (1e-3, 2e-4),
    "PS": (400.0, 60.0),
    "PSL": (400.0, 60.0),
    "T200": (1.5, 0.3),
    "T500": (1.5, 0.3),
    "PRECT": (1.5e-8, 4e-9),
    "TS": (1.5, 0.3),
    "TREFHT": (1.5, 0.3),
    "Z1000": (30.0, 5.0),
    "Z200": (40.0, 8.0),
    "ZBOT": (3.0, 1.0),
}


@dataclass(frozen=True)
class Cyclone:
    lat: float
    lon: float
    intensity: float
    radius: float
    """Radius of maximum wind, degrees."""

    @property
    def labelled(self) -> bool:
        return self.intensity >= LABEL_THRESHOLD


@dataclass(frozen=True)
class River:
    lat0: float
    lon0: float
    lat1: float
    lon1: float
    bend: float
    width: float
    intensity: float

    @property
    def labelled(self) -> bool:
        return self.intensity >= LABEL_THRESHOLD


def grid_coords(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    """ClimateNet's grid: latitude -90..90 inclusive, longitude 0..360 exclusive."""
    if nlat < 8 or nlon < 8:
        raise ValueError(f"grid too small for synthetic events: {nlat} x {nlon} (need at least 8 x 8)")
    return np.linspace(-90.0, 90.0, nlat), np.arange(nlon) * (360.0 / nlon)


def file_name(date: dt.date) -> str:
    """ClimateNet's naming: data-YYYY-MM-DD-01-1_0.nc."""
    return f"data-{date:%Y-%m-%d}-01-1_0.nc"


def _dates(start: dt.date, span_days: int, count: int) -> list[dt.date]:
    step = max(1, span_days // max(count, 1))
    return [start + dt.timedelta(days=i * step) for i in range(count)]


def _smooth_noise(rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Random large-scale field: zonal waves 0..6 with latitude profiles that vanish at the poles."""
    phi = np.deg2rad(lat)
    colat = phi + np.pi / 2
    waves, modes = 7, 5
    lat_basis = np.cos(np.arange(modes)[:, None] * colat[None, :])
    amp = rng.standard_normal((2, waves, modes)) / np.sqrt(waves * modes)
    taper = np.cos(phi)[None, :] ** np.arange(waves)[:, None]
    profiles = np.einsum("swm,mn->swn", amp, lat_basis) * taper
    k_lon = np.arange(waves)[:, None] * np.deg2rad(lon)[None, :]
    return profiles[0].T @ np.cos(k_lon) + profiles[1].T @ np.sin(k_lon)


def _bump(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((x - centre) / width) ** 2))


def _climatology(lat: np.ndarray, lon: np.ndarray, date: dt.date) -> dict[str, np.ndarray]:
    """Zonal-mean climate shifted with the season, plus a fixed wavenumber-2 surface pattern."""
    season = np.sin(2 * np.pi * (date.timetuple().tm_yday - 80) / 365.25)
    itcz = 6.0 * season
    phi = lat[:, None]
    cos2 = np.cos(np.deg2rad(phi - 0.5 * itcz)) ** 2
    abslat = np.abs(phi)
    land = np.clip(np.cos(np.deg2rad(2 * lon))[None, :] * np.cos(np.deg2rad(phi)) ** 2, 0, None)
    ts = 250.0 + 50.0 * cos2 - 3.0 * land
    psl = 101300.0 + 800.0 * _bump(abslat, 30.0, 10.0) - 1500.0 * _bump(abslat, 60.0, 10.0)
    u850 = -6.0 * _bump(abslat, 12.0, 10.0) + 10.0 * _bump(abslat, 45.0, 12.0)
    v850 = -2.0 * np.sin(np.deg2rad(3 * (phi - itcz))) * _bump(phi, 0.0, 35.0)
    moist = _bump(phi, itcz, 22.0)
    fields = {
        "TMQ": 4.0 + 48.0 * moist,
        "U850": u850,
        "V850": v850,
        "UBOT": 0.7 * u850,
        "VBOT": 0.7 * v850,
        "QREFHT": 0.001 + 0.017 * _bump(phi, itcz, 25.0),
        "PSL": psl,
        "PS": psl * np.exp(-1500.0 * land / 8000.0),
        "T200": 216.0 + 4.0 * np.cos(np.deg2rad(2 * phi)),
        "T500": 233.0 + 35.0 * cos2,
        "PRECT": 1e-8 + 8e-8 * _bump(phi, itcz, 6.0) + 3e-8 * _bump(abslat, 50.0, 10.0),
        "TS": ts,
        "TREFHT": ts - 1.5,
        "Z1000": (psl - 100000.0) * 0.083,
        "Z200": 10800.0 + 1000.0 * cos2,
        "ZBOT": 60.0 + 0.0 * phi,
    }
    shape = (lat.size, lon.size)
    return {name: np.broadcast_to(value, shape).astype(np.float64) for name, value in fields.items()}


def _draw_events(rng: np.random.Generator) -> tuple[list[Cyclone], list[River]]:
    cyclones = []
    for _ in range(rng.integers(1, 5)):
        hemisphere = rng.choice([-1.0, 1.0])
        cyclones.append(
            Cyclone(
                lat=float(hemisphere * rng.uniform(8.0, 30.0)),
                lon=float(rng.uniform(0.0, 360.0)),
                intensity=float(rng.uniform(0.1, 1.0)),
                radius=float(rng.uniform(1.0, 2.0)),
            )
        )
    rivers = []
    for _ in range(rng.integers(2, 6)):
        hemisphere = rng.choice([-1.0, 1.0])
        lon0 = float(rng.uniform(0.0, 360.0))
        rivers.append(
            River(
                lat0=float(hemisphere * rng.uniform(12.0, 22.0)),
                lon0=lon0,
                lat1=float(hemisphere * rng.uniform(42.0, 58.0)),
                lon1=lon0 + float(rng.uniform(25.0, 70.0)),
                bend=float(rng.uniform(-8.0, 8.0)),
                width=float(rng.uniform(3.0, 6.0)),
                intensity=float(rng.uniform(0.15, 1.0)),
            )
        )
    return cyclones, rivers


def _box(
    lat: np.ndarray, lon: np.ndarray, lat_range: tuple[float, float], lon_centre: float, half_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns (wrapped) and local east/north offsets in degrees of a lat-lon box."""
    rows = np.flatnonzero((lat >= lat_range[0]) & (lat <= lat_range[1]))
    dlon = np.mod(lon - lon_centre + 180.0, 360.0) - 180.0
    cols = np.flatnonzero(np.abs(dlon) <= half_width)
    return rows, cols, lat[rows][:, None], dlon[cols][None, :]


def _add_cyclone(fields: dict[str, np.ndarray], labels: np.ndarray, lat, lon, tc: Cyclone) -> None:
    size = 4.0 * tc.radius
    reach = 3.0 * size
    coslat = max(np.cos(np.deg2rad(abs(tc.lat) + reach)), 0.2)
    rows, cols, blat, dlon = _box(lat, lon, (tc.lat - reach, tc.lat + reach), tc.lon, reach / coslat)
    if rows.size == 0 or cols.size == 0:
        return
    dx = dlon * np.cos(np.deg2rad(blat))
    dy = blat - tc.lat
    r = np.hypot(dx, dy)
    core = np.exp(-((r / size) ** 2))
    s, spin = tc.intensity, np.sign(tc.lat)
    tangential = s * 45.0 * (r / tc.radius) * np.exp(1.0 - r / tc.radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(r > 0, -spin * tangential * dy / r, 0.0)
        v = np.where(r > 0, spin * tangential * dx / r, 0.0)
    box = np.ix_(rows, cols)
    anomalies = {
        "PSL": -5000.0 * s * core,
        "PS": -5000.0 * s * core,
        "Z1000": -415.0 * s * core,
        "U850": u,
        "V850": v,
        "UBOT": 0.8 * u,
        "VBOT": 0.8 * v,
        "T500": 6.0 * s * core,
        "T200": 3.0 * s * core,
        "TS": 0.5 * s * core,
        "TREFHT": 0.5 * s * core,
        "TMQ": 25.0 * s * core,
        "QREFHT": 0.004 * s * core,
        "PRECT": 1e-6 * s * np.exp(-((r / (1.5 * tc.radius)) ** 2)),
    }
    for name, anomaly in anomalies.items():
        fields[name][box] += anomaly
    if tc.labelled:
        labels[box] = np.where(r <= size, 1, labels[box])


def _river_curve(ar: River, samples: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (lat, lon), unit tangents (east, north) and position t in [0, 1] along a Bezier arc."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    start, end = np.array([ar.lat0, ar.lon0]), np.array([ar.lat1, ar.lon1])
    mid = 0.5 * (start + end) + ar.bend * np.array([-1.0, 1.0]) * np.sign(ar.lat0) * 0.5
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * mid + t**2 * end
    deriv = 2 * (1 - t) * (mid - start) + 2 * t * (end - mid)
    east = deriv[:, 1] * np.cos(np.deg2rad(points[:, 0]))
    north = deriv[:, 0]
    norm = np.hypot(east, north)
    return points, np.stack([east / norm, north / norm], 1), t[:, 0]


def _add_river(fields: dict[str, np.ndarray], labels: np.ndarray, lat, lon, ar: River) -> None:
    points, tangents, t = _river_curve(ar)
    reach = 3.0 * ar.width
    lat_lo, lat_hi = points[:, 0].min() - reach, points[:, 0].max() + reach
    centre = 0.5 * (ar.lon0 + ar.lon1)
    coslat = max(np.cos(np.deg2rad(max(abs(lat_lo), abs(lat_hi)))), 0.2)
    half_width = 0.5 * abs(ar.lon1 - ar.lon0) + reach / coslat
    rows, cols, blat, dlon = _box(lat, lon, (lat_lo, lat_hi), centre, half_width)
    if rows.size == 0 or cols.size == 0:
        return
    px = (dlon[..., None] + centre - points[:, 1]) * np.cos(np.deg2rad(blat[..., None]))
    py = blat[..., None] - points[:, 0]
    dist = np.hypot(px, py)
    nearest = np.argmin(dist, axis=-1)
    d = np.take_along_axis(dist, nearest[..., None], -1)[..., 0]
    taper = np.sqrt(np.sin(np.pi * np.clip(t[nearest], 0.02, 0.98)))
    shape = np.exp(-((d / ar.width) ** 2)) * taper
    s = ar.intensity
    east, north = tangents[nearest, 0], tangents[nearest, 1]
    box = np.ix_(rows, cols)
    anomalies = {
        "TMQ": 22.0 * s * shape,
        "QREFHT": 0.005 * s * shape,
        "PRECT": 2e-7 * s * shape,
        "U850": 20.0 * s * shape * east,
        "V850": 20.0 * s * shape * north,
        "UBOT": 12.0 * s * shape * east,
        "VBOT": 12.0 * s * shape * north,
        "TS": 2.0 * s * shape,
        "TREFHT": 2.0 * s * shape,
        "T500": 1.0 * s * shape,
    }
    for name, anomaly in anomalies.items():
        fields[name][box] += anomaly
    if ar.labelled:
        labels[box] = np.where((shape >= np.exp(-1.0)) & (labels[box] == 0), 2, labels[box])


def make_sample(
    date: dt.date, nlat: int, nlon: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, list[Cyclone], list[River]]:
    """One time step: float32 fields [nlat, nlon] by name, int64 labels and the events drawn."""
    lat, lon = grid_coords(nlat, nlon)
    fields = _climatology(lat, lon, date)
    for name, (smooth, pixel) in _NOISE.items():
        fields[name] += smooth * _smooth_noise(rng, lat, lon)
        fields[name] += pixel * rng.standard_normal((nlat, nlon), dtype=np.float32)
    labels = np.zeros((nlat, nlon), dtype=np.int64)
    cyclones, rivers = _draw_events(rng)
    for ar in rivers:
        _add_river(fields, labels, lat, lon, ar)
    for tc in cyclones:
        _add_cyclone(fields, labels, lat, lon, tc)
    fields["PRECT"] = np.clip(fields["PRECT"], 0.0, None)
    fields["QREFHT"] = np.clip(fields["QREFHT"], 1e-5, None)
    fields["TMQ"] = np.clip(fields["TMQ"], 0.1, None)
    return {name: fields[name].astype(np.float32) for name in VARIABLES}, labels, cyclones, rivers


def write_sample(
    path: Path,
    date: dt.date,
    fields: dict[str, np.ndarray],
    labels: np.ndarray,
    events: tuple[list[Cyclone], list[River]],
    seed: int,
) -> None:
    """Write one ClimateNet-layout file atomically (temporary name, then rename)."""
    nlat, nlon = labels.shape
    lat, lon = grid_coords(nlat, nlon)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.title = "Synthetic ClimateNet-layout data (not real model output)"
        ds.source = "icolightning synthetic generator (datamodules/climatenet/synthetic.py), not climate model output"
        ds.synthetic = "true"
        ds.Conventions = "CF-1.7"
        ds.institution = "icolightning"
        ds.comment = f"LABELS from the generator: {labels_legend()}"
        ds.seed = int(seed)
        cyclones, rivers = events
        ds.synthetic_events = json.dumps(
            {
                "cyclones": [asdict(c) | {"labelled": c.labelled} for c in cyclones],
                "rivers": [asdict(r) | {"labelled": r.labelled} for r in rivers],
            }
        )
        ds.createDimension("time", 1)
        ds.createDimension("lat", nlat)
        ds.createDimension("lon", nlon)
        time = ds.createVariable("time", "f8", ("time",))
        time.units, time.calendar, time.standard_name = "days since 1800-01-01 00:00:00", "standard", "time"
        time[:] = [(date - dt.date(1800, 1, 1)).days]
        for name, values, units, std_name in (
            ("lat", lat, "degrees_north", "latitude"),
            ("lon", lon, "degrees_east", "longitude"),
        ):
            coord = ds.createVariable(name, "f8", (name,))
            coord.units, coord.standard_name, coord.long_name = units, std_name, std_name
            coord[:] = values
        for name, (units, long_name) in VARIABLES.items():
            var = ds.createVariable(name, "f4", ("time", "lat", "lon"))
            var.units, var.long_name = units, long_name
            var[0] = fields[name]
        var = ds.createVariable(LABEL_VARIABLE, "i8", ("lat", "lon"))
        var.long_name = f"Segmentation labels: {labels_legend()}"
        var.flag_values = np.arange(len(CLASS_NAMES), dtype=np.int64)
        var.flag_meanings = " ".join(CLASS_NAMES)
        var[:] = labels


def _plan(n_train: int, n_test: int) -> Iterator[tuple[str, int, dt.date]]:
    """Dates per split; every test date comes after every train date, as in ClimateNet."""
    train = _dates(TRAIN_START, TRAIN_DAYS, n_train)
    test_start = max(TEST_START, train[-1] + dt.timedelta(days=1)) if train else TEST_START
    yield from (("train", i, d) for i, d in enumerate(train))
    yield from (("test", i, d) for i, d in enumerate(_dates(test_start, TEST_DAYS, n_test)))


def generate_dataset(
    out_dir: str | Path,
    n_train: int = 48,
    n_test: int = 12,
    nlat: int = 768,
    nlon: int = 1152,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write `train/` and `test/` folders of synthetic ClimateNet files; returns the paths.

    Deterministic in (seed, split, index): the same arguments give the same files.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    grid_coords(nlat, nlon)
    written = []
    plan = list(_plan(n_train, n_test))
    for split, index, date in tqdm(plan, desc="synthetic files", disable=not progress):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
        fields, labels, cyclones, rivers = make_sample(date, nlat, nlon, rng)
        path = folder / file_name(date)
        write_sample(path, date, fields, labels, (cyclones, rivers), seed)
        written.append(path)
    return written
