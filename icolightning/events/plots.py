"""Figures of the event tools: frequency maps and per-class histograms of event statistics.

Same conventions as `icolightning.plots` (matplotlib object API, equirectangular 0-360 x +-90
frame, vertex values as filled Voronoi cells, coastlines when the `maps` extra is installed,
TC red, AR blue).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from icolightning.classes import CLASS_COLOURS
from icolightning.plots import draw_coastlines, latlon_frame, voronoi_raster

HISTOGRAMS = {
    "area": ("events", "area_km2", "event area (km²)"),
    "lifetime": ("tracks", "lifetime_steps", "track lifetime (time steps)"),
    "speed": ("tracks", "speed_kmh", "mean track speed (km/h)"),
    "travel": ("tracks", "travel_km", "track travel distance (km)"),
}
"""name -> (table, column, axis label) of the histogram PNGs."""


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def save_frequency_maps(path: str | Path, kind: str, lat: np.ndarray, lon: np.ndarray,
                        frequency: np.ndarray, class_names: Sequence[str]) -> Path:
    """One map per class of the fraction of time steps each point lies inside an event.

    `kind` "latlon": frequency [K, nlat, nlon] on 1-D lat/lon; "vertex": [K, N] at per-vertex lat/lon.
    """
    fig = Figure(figsize=(6.0, 3.2 * len(class_names)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(class_names), 1))
    for ax, name, values in zip(axes, class_names, frequency, strict=True):
        if kind == "latlon":
            lat_edges, lon_edges, (cells,) = latlon_frame(lat, lon, values)
        else:  # filled Voronoi cells of the vertices
            lat_edges, lon_edges, cells = voronoi_raster(lat, lon, values)
        image = ax.pcolormesh(lon_edges, lat_edges, cells, cmap="magma", vmin=0, rasterized=True)
        draw_coastlines(ax, "0.75")  # visible on dark and bright cells of the colour map
        ax.set(xlim=(0, 360), ylim=(-90, 90), xlabel="longitude (°E)", ylabel="latitude (°)",
               title=f"{name}: fraction of time steps inside an event")
        ax.set_xticks(np.arange(0, 361, 60))
        ax.set_yticks(np.arange(-90, 91, 30))
        ax.set_aspect("equal")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, Path(path))


def save_histogram(path: str | Path, table: pd.DataFrame, column: str, label: str,
                   class_names: Sequence[str]) -> Path:
    """Histogram of `column` per event class (rows with NaN left out; counts in the legend)."""
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    values = {cls: table.loc[table["class"] == cls, column].dropna().to_numpy(dtype=np.float64)
              for cls in sorted(table["class"].unique())} if not table.empty else {}
    everything = np.concatenate(list(values.values())) if values else np.zeros(0)
    bins = np.histogram_bin_edges(everything, bins=20) if everything.size else np.linspace(0, 1, 21)
    for cls, data in values.items():
        name = class_names[cls] if cls < len(class_names) else str(cls)
        ax.hist(data, bins=bins, alpha=0.6, color=CLASS_COLOURS.get(name), label=f"{name} (n={data.size})")
    ax.set(xlabel=label, ylabel="count")
    if values:
        ax.legend(fontsize=8)
    return _save(fig, Path(path))
