"""Figures for runs and evaluations: masks on a lat/lon map, and the confusion matrix.

Matplotlib's object API only (no pyplot state, no cartographic package): vertex values are
drawn over an equirectangular lat/lon frame, with an input field (e.g. TMQ) as grey background
for orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

from icolightning.classes import CLASS_COLOURS

_EXTRA_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _class_colours(class_names: Sequence[str]) -> dict[int, str]:
    """Colour per non-background class id (class 0 is background and stays undrawn)."""
    extra = iter(_EXTRA_COLOURS)
    return {i: CLASS_COLOURS.get(name) or next(extra) for i, name in enumerate(class_names) if i > 0}


def background_channel(variables: Sequence[str]) -> int:
    """The input channel drawn as grey background under masks: TMQ (integrated water vapour, in
    which cyclones and atmospheric rivers stand out) when the model reads it, else the first."""
    return list(variables).index("TMQ") if "TMQ" in variables else 0


def wrapped_field(lat: np.ndarray, lon: np.ndarray, values: np.ndarray) -> tuple[Triangulation, np.ndarray]:
    """Triangulate vertex values on the lat/lon plane with copies shifted by ±360° and the poles
    spread along their latitude, so the shading reaches every edge of the 0–360 × ±90 frame."""
    poles = np.flatnonzero(np.abs(lat) == 90.0)
    spread = np.linspace(0.0, 360.0, 13)
    lats = [lat, lat, lat, *(np.full(13, lat[p]) for p in poles)]
    lons = [lon - 360.0, lon, lon + 360.0, *(spread for _ in poles)]
    vals = [values, values, values, *(np.full(13, values[p]) for p in poles)]
    return Triangulation(np.concatenate(lons), np.concatenate(lats)), np.concatenate(vals)


def _draw_panel(ax, latlon: np.ndarray, labels: np.ndarray, background: np.ndarray | None,
                class_names: Sequence[str], title: str) -> None:
    lat, lon = latlon[:, 0], latlon[:, 1]
    if background is not None:
        triangulation, values = wrapped_field(lat, lon, background)
        ax.tripcolor(triangulation, values, shading="gouraud", cmap="Greys_r", rasterized=True)
    size = max(0.5, 4e4 / len(lat))
    for cls, colour in _class_colours(class_names).items():
        hit = labels == cls
        ax.scatter(lon[hit], lat[hit], s=size, c=colour, marker="o", linewidths=0,
                   label=f"{class_names[cls]} ({hit.mean():.1%})")
    ax.set(xlim=(0, 360), ylim=(-90, 90), xlabel="longitude (°E)", ylabel="latitude (°)", title=title)
    ax.set_xticks(np.arange(0, 361, 60))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.set_aspect("equal")
    ax.legend(loc="lower left", fontsize=7, markerscale=max(1.0, 6 / size**0.5))


def save_mask_maps(path: str | Path, latlon: np.ndarray, prediction: np.ndarray, class_names: Sequence[str],
                   truth: np.ndarray | None = None, background: np.ndarray | None = None,
                   title: str = "") -> Path:
    """Maps of predicted vertex masks ([S, N] or [N] class ids), beside the true ones if given."""
    prediction = np.atleast_2d(prediction)
    rows = len(prediction)
    backgrounds = [None] * rows if background is None else np.atleast_2d(background)
    cols = 1 if truth is None else 2
    fig = Figure(figsize=(6.5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for row in range(rows):
        if truth is not None:
            _draw_panel(axes[row, 0], latlon, np.atleast_2d(truth)[row], backgrounds[row], class_names,
                        f"truth (sample {row})")
        _draw_panel(axes[row, -1], latlon, prediction[row], backgrounds[row], class_names,
                    f"prediction (sample {row})")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
