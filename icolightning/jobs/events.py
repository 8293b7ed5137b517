"""The work behind `icolightning-events`: stream label files through the event tracker, count
frequencies on the files' grid and detection scores against the truth, then write the results.

Outputs in the output folder:

* `events.csv` - one row per event per time step: the `find_events` columns plus `file` and
  `datetime` (ISO time of the step when the file has one);
* `tracks.csv` - one row per track (`summarize_tracks`);
* `frequency.nc` - `<class>_frequency` (fraction of the time steps each grid point lies inside an
  event of that class) on the files' own grid, and `steps`;
* `detection.json` (with truth) - per class: true and predicted events, detected, false alarms,
  POD and FAR (see `icolightning.events.tracking.DetectionCounts` for the overlap rule);
* `frequency.png`, `area_hist.png`, `lifetime_hist.png`, `speed_hist.png`, `travel_hist.png`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from datamodules.io.atomic import atomic_path
from datamodules.io.cf import CF_VERSION, latlon_coords, without_coordinate_fill
from datamodules.io.ugrid import add_mesh
from icolightning.classes import CLASSES
from icolightning.errors import DataFileError
from icolightning.events.files import GridInfo, label_times, open_labels
from icolightning.events.tracking import (
    DetectionCounts,
    EventTracker,
    default_max_gap_hours,
    detection_counts,
    events_frame,
    summarize_tracks,
)
from icolightning.grid import level_of


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class EventRun:
    """Accumulates events, frequencies and detection counts over any number of files."""

    def __init__(self, level: int, classes: Mapping[int, str], progress: bool = True,
                 max_gap_hours: float | None = None) -> None:
        self.level = int(level)
        self.max_gap_hours = max_gap_hours
        """Steps further apart are not linked into one track; None: 1.5 times the inputs' median step, at most 24 h."""
        self.classes = dict(classes)
        self.progress = progress
        self.grid: GridInfo | None = None
        self.tracker: EventTracker | None = None
        self.rows: list[dict] = []
        self.frequency: np.ndarray | None = None
        self.steps = 0
        self.counts: DetectionCounts | None = None

    def _start(self, path: Path, grid: GridInfo, first_step: np.ndarray) -> None:
        """Fix the grid (and the vertex level of icosahedral files) from the first file."""
        if self.grid is None:
            self.grid = grid
            if grid.kind == "vertex":
                self.level = level_of(first_step.size)
            self.tracker = EventTracker(self.level, tuple(self.classes), self.max_gap_hours)
        elif not grid.same_as(self.grid):
            raise DataFileError(path, "is on another grid than the first input; all inputs must share one grid")

    def process(self, inputs: Sequence[Path], variable: str, truth: Sequence[Path] | None = None,
                truth_variable: str = "LABELS") -> dict:
        """Read every step of every input (and its truth); returns the summary (also in write())."""
        from tqdm.auto import tqdm

        classes = tuple(self.classes)
        if self.max_gap_hours is None:
            self.max_gap_hours = default_max_gap_hours([t for path in inputs for t in label_times(path, variable)])
        with tqdm(desc="finding events", unit="step", disable=not self.progress) as bar:
            for i, path in enumerate(inputs):
                grid, count, steps = open_labels(path, variable, self.level)
                truth_steps = None
                for t, step in enumerate(steps):
                    if t == 0:
                        self._start(path, grid, step.vertices)
                        if truth is not None:
                            truth_steps = self._open_truth(truth[i], truth_variable, count)
                    for row in self.tracker.update(step.vertices, self.steps, step.time):
                        self.rows.append({**row, "file": path.name, "datetime": step.time})
                    hits = np.stack([step.native == cls for cls in classes])
                    self.frequency = hits.astype(np.int64) if self.frequency is None else self.frequency + hits
                    if truth_steps is not None:
                        self._score(step.vertices, next(truth_steps).vertices, truth[i])
                    self.steps += 1
                    bar.update(1)
        return self.summary()

    def _open_truth(self, path: Path, variable: str, count: int):
        _, truth_count, steps = open_labels(path, variable, self.level)
        if truth_count != count:
            raise DataFileError(path, f"has {truth_count} time steps, its prediction file {count}")
        return steps

    def _score(self, pred: np.ndarray, true: np.ndarray, path: Path) -> None:
        if true.shape != pred.shape:
            raise DataFileError(path, f"has {true.size} vertices after regridding, the prediction {pred.size}")
        counts = detection_counts(pred, true, self.level, tuple(self.classes))
        if self.counts is None:
            self.counts = counts
        else:
            for name in ("true_events", "detected", "predicted_events", "false_alarms"):
                setattr(self.counts, name, getattr(self.counts, name) + getattr(counts, name))

    def events(self) -> pd.DataFrame:
        table = events_frame(self.rows)
        table["file"] = [row["file"] for row in self.rows]
        table["datetime"] = pd.to_datetime([row["datetime"] for row in self.rows])
        return table

    def detection(self) -> dict[str, float | int | None]:
        if self.counts is None:
            return {}
        out: dict[str, float | int | None] = {}
        c = self.counts
        for i, name in enumerate(self.classes.values()):
            out |= {f"true_events_{name}": int(c.true_events[i]), f"detected_{name}": int(c.detected[i]),
                    f"predicted_events_{name}": int(c.predicted_events[i]),
                    f"false_alarms_{name}": int(c.false_alarms[i]),
                    f"event_pod_{name}": _number(c.pod[i]), f"event_far_{name}": _number(c.far[i])}
        return out

    def summary(self) -> dict:
        events = events_frame(self.rows)
        out: dict = {"steps": self.steps, "level": self.level, "max_gap_hours": self.max_gap_hours}
        for cls, name in self.classes.items():
            mine = events[events["class"] == cls]
            out[f"events_{name}"] = len(mine)
            out[f"tracks_{name}"] = int(mine["track"].nunique())
        return out | self.detection()

    def write(self, out_dir: Path, plots: bool = True) -> list[Path]:
        """Write the tables, frequency.nc, detection.json and (optionally) the figures."""
        if self.grid is None:
            raise DataFileError(out_dir, "no time steps were read")
        out_dir.mkdir(parents=True, exist_ok=True)
        events = self.events()
        tracks = summarize_tracks(events)
        written = [out_dir / "events.csv", out_dir / "tracks.csv", out_dir / "frequency.nc"]
        events.to_csv(written[0], index=False, float_format="%.6g")
        tracks.to_csv(written[1], index=False, float_format="%.6g")
        self._write_frequency(written[2])
        if self.counts is not None:
            written.append(out_dir / "detection.json")
            written[-1].write_text(json.dumps(self.detection(), indent=1))
        if plots:
            written += self._plots(out_dir, events, tracks)
        return written

    def _frequency_dims(self) -> tuple[str, ...]:
        return ("vertex",) if self.grid.kind == "vertex" else (self.grid.lat_dim, self.grid.lon_dim)

    def _write_frequency(self, path: Path) -> None:
        grid, dims = self.grid, self._frequency_dims()
        fraction = self.frequency / max(self.steps, 1)
        coords = ({"lat": ("vertex", grid.lat, {"units": "degrees_north", "standard_name": "latitude"}),
                   "lon": ("vertex", grid.lon, {"units": "degrees_east", "standard_name": "longitude"})}
                  if grid.kind == "vertex"
                  else latlon_coords(grid.lat_dim, grid.lon_dim, grid.lat, grid.lon))
        ds = xr.Dataset(coords=coords, attrs={"Conventions": CF_VERSION, "history": "icolightning-events",
                                              "title": "icolightning-events: event frequency", "steps": self.steps})
        for values, name in zip(fraction, self.classes.values(), strict=True):
            ds[f"{name}_frequency"] = xr.DataArray(values.astype(np.float32), dims=dims, attrs={
                "long_name": f"fraction of the {self.steps} time steps inside a {name} event", "units": "1"})
        if grid.kind == "vertex":
            ds = add_mesh(ds, self.level)
        with atomic_path(path) as tmp:
            without_coordinate_fill(ds).to_netcdf(tmp, engine="netcdf4")

    def _plots(self, out_dir: Path, events: pd.DataFrame, tracks: pd.DataFrame) -> list[Path]:
        from icolightning.events.plots import HISTOGRAMS, save_frequency_maps, save_histogram

        names = {0: CLASSES[0].short, **self.classes}
        fraction = self.frequency / max(self.steps, 1)
        paths = [save_frequency_maps(out_dir / "frequency.png", self.grid.kind, self.grid.lat, self.grid.lon,
                                     fraction, list(self.classes.values()))]
        tables = {"events": events, "tracks": tracks}
        for name, (table, column, label) in HISTOGRAMS.items():
            paths.append(save_histogram(out_dir / f"{name}_hist.png", tables[table], column, label,
                                        [names.get(k, str(k)) for k in range(max(names) + 1)]))
        return paths
