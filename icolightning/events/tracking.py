"""Events on the icosahedral vertices: connected regions of one class, tracked through time.

An *event* is a connected component of the vertices carrying one class (TC or AR) at one time
step, connectivity being the mesh's neighbour rings; a region across the date line or over a
pole is therefore one event. Its area is the sum of the vertices' spherical Voronoi areas
(`IcoGrid.areas`, Earth radius 6371.0 km) and its centre the area-weighted mean of the unit
vectors, projected back onto the sphere (longitude in [0, 360)).

*Tracking*: an event continues a track of the previous step when they share at least one
vertex (sharing a vertex implies the same class). Merges and splits:

* merge - an event overlapping several previous events continues the track of the largest of
  them (by area; ties: the earlier event id); the other tracks end there;
* split - when several events continue the same previous event, the largest (by area; ties:
  the lower event id) keeps its track and the others start new tracks.

*Time*: with a maximum gap (``max_gap_hours``), an event links only to the step before when
both steps have a time and they are at most that far apart; a longer gap (another file of
another season, missing steps) starts new tracks. `default_max_gap_hours` picks 1.5 × the
median step, so one missing step breaks a track but the usual time step never does, and at most
a day: overlap tracking of storms and rivers means nothing across longer gaps, so files of
scattered dates (ClimateNet's single-step files) give one track per event.

`EventTracker` takes one step at a time, so arbitrarily long series stream through it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse
from scipy.sparse.csgraph import connected_components

from icolightning.grid import IcoGrid

EARTH_RADIUS_KM = 6371.0
EVENT_COLUMNS = ("time", "event", "track", "class", "area_km2", "lat", "lon", "vertices")
GAP_FACTOR = 1.5
"""The default maximum gap between linked steps, in median time steps ..."""
GAP_CAP_HOURS = 24.0
"""... and never more than this (daily data still links)."""


def _hours(times: Sequence[object]) -> np.ndarray:
    """Times (ISO strings, datetimes or None) → hours since the epoch, NaN where unknown."""
    stamps = pd.to_datetime(pd.Series(list(times), dtype=object), errors="coerce")
    return ((stamps - pd.Timestamp(0)).dt.total_seconds() / 3600.0).to_numpy(dtype=np.float64)


def default_max_gap_hours(times: Sequence[object]) -> float | None:
    """min(1.5 × the median positive step between known consecutive times, 24 h); with no such
    step (one time, or none known) 24 h when a time is known, else None (no limit)."""
    hours = _hours(times)
    steps = np.diff(hours)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    if steps.size:
        return float(min(GAP_FACTOR * np.median(steps), GAP_CAP_HOURS))
    return GAP_CAP_HOURS if np.isfinite(hours).any() else None


@functools.lru_cache(maxsize=8)
def vertex_adjacency(level: int) -> scipy.sparse.csr_matrix:
    """[N, N] symmetric 0/1 adjacency of the mesh (every vertex with its 5 or 6 neighbours)."""
    grid = IcoGrid(level)
    n = grid.num_vertices
    rows = np.repeat(np.arange(n), 6)
    cols = grid.ring.reshape(-1)
    adjacency = scipy.sparse.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
    adjacency.data[:] = 1  # a corner lists its first neighbour twice
    return adjacency


def components(mask: np.ndarray, level: int) -> np.ndarray:
    """[N] component id (0, 1, ...) of every vertex in `mask`, -1 elsewhere."""
    ids = np.full(mask.shape, -1, dtype=np.int64)
    inside = np.flatnonzero(mask)
    if inside.size:
        sub = vertex_adjacency(level)[inside][:, inside]
        ids[inside] = connected_components(sub, directed=False)[1]
    return ids


def _centres(ids: np.ndarray, count: int, areas: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted centres (lat, lon in [0, 360)) of components 0 .. count-1."""
    inside = ids >= 0
    weighted = np.stack([np.bincount(ids[inside], areas[inside] * xyz[inside, k], count) for k in range(3)], -1)
    weighted /= np.maximum(np.linalg.norm(weighted, axis=-1, keepdims=True), 1e-300)
    lat = np.rad2deg(np.arcsin(np.clip(weighted[:, 2], -1.0, 1.0)))
    lon = np.mod(np.rad2deg(np.arctan2(weighted[:, 1], weighted[:, 0])), 360.0)
    return lat, np.where(lon >= 360.0, 0.0, lon)


@dataclass
class _Step:
    """Events of one step: vertex -> event id (-1 outside events), and id -> (track, area)."""

    owner: np.ndarray
    track: dict[int, int] = field(default_factory=dict)
    area: dict[int, float] = field(default_factory=dict)


class EventTracker:
    """Finds the events of successive time steps of one series and links them into tracks."""

    def __init__(self, level: int, classes: Sequence[int] = (1, 2), max_gap_hours: float | None = None) -> None:
        if max_gap_hours is not None and not max_gap_hours > 0:
            raise ValueError(f"max_gap_hours must be positive, got {max_gap_hours}")
        self.level = int(level)
        self.max_gap_hours = max_gap_hours
        self._previous_hours = float("nan")
        self.classes = tuple(int(c) for c in classes)
        grid = IcoGrid(self.level)
        self._areas_km2 = grid.areas * EARTH_RADIUS_KM**2
        self._xyz = grid.xyz
        self._previous: _Step | None = None
        self._next_event = 0
        self._next_track = 0
        self._time = 0

    def _new_track(self) -> int:
        self._next_track += 1
        return self._next_track - 1

    def update(self, labels: np.ndarray, time: int | None = None, when: object = None) -> list[dict]:
        """Events of one step of labels [N]; returns one row (dict of EVENT_COLUMNS) per event.

        ``when`` (ISO string or datetime, optional) is the step's time, checked against
        ``max_gap_hours``."""
        labels = np.asarray(labels)
        if labels.shape != self._areas_km2.shape:
            raise ValueError(f"labels must have {self._areas_km2.size} vertices (level {self.level}), "
                             f"got shape {labels.shape}")
        time = self._time if time is None else int(time)
        self._time = time + 1
        owner = np.full(labels.shape, -1, dtype=np.int64)
        rows = []
        for cls in self.classes:
            ids = components(labels == cls, self.level)
            count = int(ids.max()) + 1
            if count == 0:
                continue
            inside = ids >= 0
            area = np.bincount(ids[inside], self._areas_km2[inside], count)
            size = np.bincount(ids[inside], minlength=count)
            lat, lon = _centres(ids, count, self._areas_km2, self._xyz)
            owner[inside] = ids[inside] + self._next_event
            for k in range(count):
                rows.append({"time": time, "event": self._next_event + k, "track": -1, "class": cls,
                             "area_km2": float(area[k]), "lat": float(lat[k]), "lon": float(lon[k]),
                             "vertices": int(size[k])})
            self._next_event += count
        step = _Step(owner, area={row["event"]: row["area_km2"] for row in rows})
        hours = float(_hours([when])[0])
        if self.max_gap_hours is not None and hours - self._previous_hours > self.max_gap_hours:
            self._previous = None  # too long ago: nothing continues
        self._link(step, rows)
        self._previous, self._previous_hours = step, hours
        return rows

    def _link(self, step: _Step, rows: list[dict]) -> None:
        """Give every event of `step` a track (see the module docstring for merges and splits)."""
        prev = self._previous
        heir: dict[int, int] = {}
        if prev is not None:
            both = (prev.owner >= 0) & (step.owner >= 0)
            pairs = np.unique(np.stack([step.owner[both], prev.owner[both]], -1), axis=0)
            main: dict[int, int] = {}
            for event, before in pairs.tolist():
                best = main.get(event)
                if best is None or (prev.area[before], -before) > (prev.area[best], -best):
                    main[event] = before
            for event, before in main.items():
                rival = heir.get(before)
                if rival is None or (step.area[event], -event) > (step.area[rival], -rival):
                    heir[before] = event
        continuing = {event: prev.track[before] for before, event in heir.items()} if prev else {}
        for row in rows:
            row["track"] = continuing.get(row["event"])
            if row["track"] is None:
                row["track"] = self._new_track()
            step.track[row["event"]] = row["track"]


def find_events(
    labels: np.ndarray, level: int, classes: Sequence[int] = (1, 2), times: Sequence[object] | None = None,
    max_gap_hours: float | None = None,
) -> pd.DataFrame:
    """Events of integer labels [T, N] on the level's vertices: one row per event per step.

    Columns: time (step index), event (unique id), track, class, area_km2, lat, lon, vertices,
    plus `datetime` when `times` (one per step) is given. With times, steps further apart than
    ``max_gap_hours`` (default `default_max_gap_hours(times)`; ``inf``: no limit) are not linked.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [T, N], got shape {labels.shape}")
    if times is not None and len(times) != len(labels):
        raise ValueError(f"{len(times)} times for {len(labels)} steps")
    if times is not None and max_gap_hours is None:
        max_gap_hours = default_max_gap_hours(times)
    tracker = EventTracker(level, classes, max_gap_hours)
    whens = [None] * len(labels) if times is None else list(times)
    rows = [row for step, when in zip(labels, whens, strict=True) for row in tracker.update(step, when=when)]
    table = events_frame(rows)
    if times is not None:
        table["datetime"] = pd.to_datetime([times[t] for t in table["time"]])
    return table


def events_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """The event table with fixed column order and dtypes (also when empty)."""
    table = pd.DataFrame(list(rows), columns=list(EVENT_COLUMNS))
    return table.astype({"time": np.int64, "event": np.int64, "track": np.int64, "class": np.int64,
                         "area_km2": np.float64, "lat": np.float64, "lon": np.float64, "vertices": np.int64})


def great_circle_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance (haversine, Earth radius 6371.0 km) between points in degrees."""
    p1, p2, dl = np.deg2rad(lat1), np.deg2rad(lat2), np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def summarize_tracks(events: pd.DataFrame) -> pd.DataFrame:
    """One row per track: class, start, end (steps), lifetime_steps, lifetime_hours (first to last
    sighting; NaN without times), travel_km (sum of the centre's great-circle steps), speed_kmh
    (travel / lifetime hours; NaN for one-step tracks or without times), max_area_km2, events."""
    columns = ["track", "class", "start", "end", "lifetime_steps", "lifetime_hours", "travel_km", "speed_kmh",
               "max_area_km2", "events"]
    if events.empty:
        return pd.DataFrame(columns=columns)
    ordered = events.sort_values(["track", "time"])
    same = ordered["track"].to_numpy()[1:] == ordered["track"].to_numpy()[:-1]
    steps = great_circle_km(ordered["lat"].to_numpy()[:-1], ordered["lon"].to_numpy()[:-1],
                            ordered["lat"].to_numpy()[1:], ordered["lon"].to_numpy()[1:])
    ordered = ordered.assign(step_km=np.concatenate([[0.0], np.where(same, steps, 0.0)]))
    groups = ordered.groupby("track", sort=True)
    tracks = groups.agg(cls=("class", "first"), start=("time", "min"), end=("time", "max"),
                        travel_km=("step_km", "sum"), max_area_km2=("area_km2", "max"), events=("event", "size"))
    tracks = tracks.rename(columns={"cls": "class"}).reset_index()
    tracks["lifetime_steps"] = tracks["end"] - tracks["start"] + 1
    if "datetime" in ordered:
        span = groups["datetime"].max() - groups["datetime"].min()
        tracks["lifetime_hours"] = (span.dt.total_seconds() / 3600.0).to_numpy()
    else:
        tracks["lifetime_hours"] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        hours = tracks["lifetime_hours"].to_numpy(dtype=np.float64)
        tracks["speed_kmh"] = np.where(hours > 0, tracks["travel_km"] / hours, np.nan)
    return tracks[columns]


@dataclass
class DetectionCounts:
    """Event-level detection counts per class (summed over steps).

    Overlap rule: a true event is *detected* when at least one of its vertices is predicted as
    its class at the same step (it then overlaps a predicted event of that class); a predicted
    event is a *false alarm* when none of its vertices has that class in the truth.
    POD = detected / true events, FAR = false alarms / predicted events (NaN when undefined).
    """

    true_events: np.ndarray
    detected: np.ndarray
    predicted_events: np.ndarray
    false_alarms: np.ndarray

    @property
    def pod(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.detected / self.true_events

    @property
    def far(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.false_alarms / self.predicted_events


def detection_counts(
    pred: np.ndarray, truth: np.ndarray, level: int, classes: Sequence[int] = (1, 2)
) -> DetectionCounts:
    """Counts for predicted and true labels [T, N] (or [N]) per class, in the order of `classes`."""
    pred, truth = np.atleast_2d(pred), np.atleast_2d(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    counts = np.zeros((4, len(classes)), dtype=np.int64)
    for p, t in zip(pred, truth, strict=True):
        for i, cls in enumerate(classes):
            true_total, true_hit = _overlapping(t == cls, p == cls, level)
            pred_total, pred_hit = _overlapping(p == cls, t == cls, level)
            counts[:, i] += (true_total, true_hit, pred_total, pred_total - pred_hit)
    return DetectionCounts(*counts)


def _overlapping(mask: np.ndarray, other: np.ndarray, level: int) -> tuple[int, int]:
    """(number of events of `mask`, how many of them share a vertex with `other`)."""
    ids = components(mask, level)
    return int(ids.max()) + 1, np.unique(ids[other & (ids >= 0)]).size
