"""Figures for runs and evaluations: class masks on lat/lon maps, and the confusion matrix.

Matplotlib's object API only (no pyplot state), one equirectangular frame 0-360°E × ±90°:

* vertex signals are drawn as filled Voronoi cells (every map pixel takes the value of its
  nearest vertex), so nothing is a dot, cells across the date line and the poles are whole;
* lat-lon fields (prediction files) are drawn cell by cell on their own grid (`pcolormesh`),
  longitudes wrapped into 0-360 and sorted, so a -180..180 grid is drawn the same way;
* classes are filled in their colours (TC red, AR blue) over the input field in grey, with the
  probability of the predicted class as opacity when it is known;
* coastlines come from the optional ``global-land-mask`` package (extra ``maps``; offline data
  shipped in the wheel, a 1 km land mask contoured at the coast); without it the maps are
  drawn without coastlines and say so in a corner.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from scipy.spatial import cKDTree

from icolightning.classes import CLASS_COLOURS

_EXTRA_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
RASTER_STEP_DEG = 0.5
"""Pixel size of the Voronoi-cell maps of vertex signals."""
COAST_STEP_DEG = 0.25
"""Sampling of the land mask that the coastlines are contoured from."""


def _class_colours(class_names: Sequence[str]) -> dict[int, str]:
    """Colour per non-background class id (class 0 is background and stays undrawn)."""
    extra = iter(_EXTRA_COLOURS)
    return {i: CLASS_COLOURS.get(name) or next(extra) for i, name in enumerate(class_names) if i > 0}


def background_channel(variables: Sequence[str]) -> int:
    """The input channel drawn as grey background under masks: TMQ (integrated water vapour, in
    which cyclones and atmospheric rivers stand out) when the model reads it, else the first."""
    return list(variables).index("TMQ") if "TMQ" in variables else 0



def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


def _edges(step: float) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(-90.0, 90.0 + step / 2, step), np.arange(0.0, 360.0 + step / 2, step)


@functools.lru_cache(maxsize=8)
def _nearest_vertex(lat_key: bytes, lon_key: bytes, step: float) -> np.ndarray:
    lat, lon = np.frombuffer(lat_key), np.frombuffer(lon_key)
    lat_edges, lon_edges = _edges(step)
    centres = np.meshgrid((lat_edges[:-1] + lat_edges[1:]) / 2, (lon_edges[:-1] + lon_edges[1:]) / 2, indexing="ij")
    return cKDTree(_unit_vectors(lat, lon)).query(_unit_vectors(*centres))[1]


def voronoi_raster(lat: np.ndarray, lon: np.ndarray, values: np.ndarray, step: float = RASTER_STEP_DEG
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat edges, lon edges 0-360, [nlat, nlon] values): each pixel holds its nearest vertex's
    value, i.e. the vertices' spherical Voronoi cells filled (date line and poles included)."""
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    nearest = _nearest_vertex(lat.tobytes(), lon.tobytes(), float(step))
    return *_edges(step), np.asarray(values)[nearest]


def latlon_frame(lat: np.ndarray, lon: np.ndarray, *fields: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A lat-lon grid's cell edges in the 0-360 frame, and its fields [..., nlat, nlon] with the
    columns sorted to match (any CF longitude range or latitude order)."""
    lon360 = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    order = np.argsort(lon360, kind="stable")
    lon360 = lon360[order]
    gaps = np.diff(lon360, append=lon360[0] + 360.0)
    lon_edges = np.concatenate([[lon360[0] - gaps[-1] / 2], lon360 + gaps / 2])
    lat = np.asarray(lat, dtype=np.float64)
    mid = (lat[:-1] + lat[1:]) / 2
    lat_edges = np.clip(np.concatenate([[2 * lat[0] - mid[0]], mid, [2 * lat[-1] - mid[-1]]]), -90.0, 90.0)
    return lat_edges, lon_edges, [np.asarray(f)[..., order] for f in fields]


@functools.lru_cache(maxsize=1)
def land_mask(step: float = COAST_STEP_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(lat, lon 0-360, land [nlat, nlon] bool) from `global-land-mask`; None when not installed."""
    try:
        from global_land_mask import globe
    except ImportError:
        return None
    lat = np.arange(-89.875, 90.0, step)
    lon = np.arange(0.0, 360.0 + step / 2, step)
    grid_lat, grid_lon = np.meshgrid(lat, lon, indexing="ij")
    return lat, lon, globe.is_land(grid_lat, np.where(grid_lon >= 180.0, grid_lon - 360.0, grid_lon))


def draw_coastlines(ax, colour: str = "k") -> bool:
    """Coastlines on a 0-360 lat/lon axis; False (and a note on the map) without the data."""
    mask = land_mask()
    if mask is None:
        ax.text(0.99, 0.01, "no coastlines: pip install icolightning[maps]", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=6, color="0.4")
        return False
    lat, lon, land = mask
    ax.contour(lon, lat, land.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.5)
    return True


def _class_overlay(labels: np.ndarray, class_names: Sequence[str], opacity: np.ndarray | None) -> np.ndarray:
    """[..., 4] RGBA: class colours where labels > 0 (alpha = opacity, or 0.85), transparent elsewhere."""
    rgba = np.zeros((*labels.shape, 4))
    for cls, colour in _class_colours(class_names).items():
        rgba[labels == cls] = to_rgba(colour)
    alpha = 0.85 if opacity is None else np.clip(opacity, 0.15, 1.0)
    rgba[..., 3] = np.where(labels > 0, alpha, 0.0)
    return rgba


def draw_map(ax, lat_edges: np.ndarray, lon_edges: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             background: np.ndarray | None = None, opacity: np.ndarray | None = None, title: str = "") -> None:
    """One map panel from [nlat, nlon] cells: grey field, filled classes, coastlines, legend."""
    if background is not None:
        ax.pcolormesh(lon_edges, lat_edges, background, cmap="Greys_r", rasterized=True)
    ax.pcolormesh(lon_edges, lat_edges, _class_overlay(labels, class_names, opacity), rasterized=True)
    draw_coastlines(ax)
    weight = np.cos(np.deg2rad((lat_edges[:-1] + lat_edges[1:]) / 2))[:, None] * np.diff(lon_edges)[None]
    handles = [ax.fill([], [], color=colour, label=f"{class_names[cls]} "
                       f"({(weight * (labels == cls)).sum() / weight.sum():.1%} of the area)")[0]
               for cls, colour in _class_colours(class_names).items()]
    ax.set(xlim=(0, 360), ylim=(-90, 90), xlabel="longitude (°E)", ylabel="latitude (°)", title=title)
    ax.set_xticks(np.arange(0, 361, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_aspect("equal")
    note = "" if opacity is None else " (opacity: probability)"
    ax.legend(handles=handles, loc="lower left", fontsize=7, title=note.strip() or None, title_fontsize=6)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def save_mask_maps(path: str | Path, latlon: np.ndarray, prediction: np.ndarray, class_names: Sequence[str],
                   truth: np.ndarray | None = None, background: np.ndarray | None = None,
                   title: str = "") -> Path:
    """Maps of predicted vertex masks ([S, N] or [N] class ids) as filled Voronoi cells, beside
    the true ones if given, over the vertex field `background` ([S, N]) in grey."""
    prediction = np.atleast_2d(prediction)
    rows = len(prediction)
    backgrounds = [None] * rows if background is None else np.atleast_2d(background)
    panels = [("prediction", prediction)] if truth is None else [("truth", np.atleast_2d(truth)),
                                                                  ("prediction", prediction)]
    fig = Figure(figsize=(6.5 * len(panels), 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, len(panels), squeeze=False)
    lat, lon = latlon[:, 0], latlon[:, 1]
    for row in range(rows):
        grey = None if backgrounds[row] is None else voronoi_raster(lat, lon, backgrounds[row])[2]
        for col, (name, labels) in enumerate(panels):
            lat_edges, lon_edges, cells = voronoi_raster(lat, lon, labels[row])
            draw_map(axes[row, col], lat_edges, lon_edges, cells, class_names, grey, title=f"{name} (sample {row})")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_latlon_prediction_map(path: str | Path, lat: np.ndarray, lon: np.ndarray, labels: np.ndarray,
                               class_names: Sequence[str], probability: np.ndarray | None = None,
                               background: np.ndarray | None = None, title: str = "") -> Path:
    """One step of a prediction on its lat-lon grid: labels [nlat, nlon] filled per grid cell,
    the predicted class's probability as opacity, the input field in grey underneath."""
    lat_edges, lon_edges, fields = latlon_frame(lat, lon, labels, *(f for f in (probability, background)
                                                                     if f is not None))
    fields = iter(fields)
    cells = next(fields)
    opacity = next(fields) if probability is not None else None
    grey = next(fields) if background is not None else None
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    draw_map(fig.subplots(), lat_edges, lon_edges, cells, class_names, grey, opacity, title)
    return _save(fig, path)


def save_confusion_matrix(path: str | Path, confusion: np.ndarray, class_names: Sequence[str],
                          title: str = "") -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) annotated with raw counts."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{rates[i, j]:.1%}\n{int(confusion[i, j]):,}", ha="center", va="center",
                    fontsize=8, color="white" if rates[i, j] > 0.5 else "black")
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true", title=title or "confusion matrix (vertices)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)
