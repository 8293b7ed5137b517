"""A synthetic ERA5-like zarr archive (for tests and benchmarks, never passed off as real).

One zarr store, 6-hourly steps along `time`, ERA5 conventions for the grid (`latitude` descending
from 90 to -90, `longitude` 0..360), time-chunked like cloud ERA5 copies, the fields and labels of
the ClimateNet synthetic generator (`datamodules.climatenet.synthetic.make_sample`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from datamodules.climatenet.schema import VARIABLES
from datamodules.climatenet.synthetic import grid_coords, make_sample
from datamodules.io.archive import consolidate
from icolightning.classes import LABEL_VARIABLE


def generate_archive(out: str | Path, steps: int = 240, nlat: int = 24, nlon: int = 48,
                     variables: Sequence[str] = ("TMQ", "U850", "V850", "PSL"), start: str = "1979-01-01",
                     hours: int = 6, seed: int = 0, time_chunk: int = 8) -> Path:
    """Write the archive to `out` (a `.zarr` folder); deterministic in (seed, step)."""
    times = np.datetime64(start, "h") + np.arange(steps) * np.timedelta64(hours, "h")
    lat, lon = grid_coords(nlat, nlon)
    fields = {name: np.empty((steps, nlat, nlon), np.float32) for name in variables}
    labels = np.empty((steps, nlat, nlon), np.uint8)
    for t, stamp in enumerate(times):
        date = dt.date.fromisoformat(str(stamp.astype("datetime64[D]")))
        sample, labels[t], _, _ = make_sample(date, nlat, nlon, np.random.default_rng([seed, 2, t]))
        for name in variables:
            fields[name][t] = sample[name]
    flip = slice(None, None, -1)  # ERA5 stores latitude north to south
    data = {name: (("time", "latitude", "longitude"), values[:, flip], {"units": VARIABLES[name][0]})
            for name, values in fields.items()}
    data[LABEL_VARIABLE] = (("time", "latitude", "longitude"), labels[:, flip], {"flag_values": [0, 1, 2]})
    coords = {"time": times.astype("datetime64[ns]"),
              "latitude": ("latitude", lat[flip], {"units": "degrees_north", "standard_name": "latitude"}),
              "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"})}
    ds = xr.Dataset(data, coords, attrs={"title": "synthetic ERA5-like archive (not real data)"})
    ds = ds.chunk({"time": time_chunk, "latitude": nlat, "longitude": nlon})
    ds.to_zarr(out, mode="w", consolidated=False)
    consolidate(out)
    return Path(out)
