"""The maps users read: vertex values as filled Voronoi cells, lat-lon grids in any CF longitude
range drawn in one 0-360 frame, and coastlines from offline data with a clean fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from icolightning import plots
from icolightning.grid import IcoGrid


def test_voronoi_raster_gives_every_pixel_its_nearest_vertex() -> None:
    grid = IcoGrid(3)
    lat, lon = grid.latlon.T
    ids = np.arange(grid.num_vertices)
    lat_edges, lon_edges, cells = plots.voronoi_raster(lat, lon, ids, step=1.0)
    assert cells.shape == (180, 360) and lon_edges[0] == 0.0 and lon_edges[-1] == 360.0
    assert set(np.unique(cells)) == set(ids)  # every cell is drawn
    # A vertex on the prime meridian owns pixels on both sides of the 0/360 seam.
    seam = int(np.flatnonzero((lon == 0.0) & (np.abs(lat) < 60))[0])
    row = int(np.searchsorted(lat_edges, lat[seam]) - 1)
    assert cells[row, 0] == seam and cells[row, -1] == seam
    assert (cells[-1] == grid.pole_ids[0]).all() and (cells[0] == grid.pole_ids[1]).all()
    # The pixel over each vertex is that vertex.
    rows = np.clip(np.searchsorted(lat_edges, lat) - 1, 0, 179)
    cols = np.clip(np.searchsorted(lon_edges, lon, side="right") - 1, 0, 359)
    assert (cells[rows, cols] == ids).mean() > 0.97  # the rest sit on a pixel's edge


def test_latlon_frame_draws_a_minus_180_grid_like_a_0_360_grid() -> None:
    lat = np.linspace(90, -90, 19)  # descending, as many files are
    lon360 = np.arange(0.0, 360.0, 10.0)
    field = np.random.default_rng(0).random((19, 36))
    lon180 = np.where(lon360 >= 180, lon360 - 360, lon360)
    order = np.argsort(lon180)
    a = plots.latlon_frame(lat, lon360, field)
    b = plots.latlon_frame(lat, lon180[order], field[:, order])
    np.testing.assert_allclose(a[1], b[1])
    np.testing.assert_allclose(a[2][0], b[2][0])
    np.testing.assert_allclose(a[1][[0, -1]], [-5.0, 355.0])
    assert a[0][0] == 90.0 and a[0][-1] == -90.0


def test_coastlines_come_from_the_offline_land_mask() -> None:
    pytest.importorskip("global_land_mask")
    lat, lon, land = plots.land_mask()
    at = lambda la, lo: land[np.argmin(np.abs(lat - la)), np.argmin(np.abs(lon - lo))]  # noqa: E731
    assert at(10.0, 20.0) and at(45.0, 260.0) and at(-25.0, 135.0)  # Africa, North America, Australia
    assert not at(0.0, 180.0) and not at(30.0, 320.0)  # Pacific, Atlantic
    ax = Figure().subplots()
    assert plots.draw_coastlines(ax) and len(ax.collections) == 1


def test_without_the_maps_extra_the_map_says_so(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "global_land_mask", None)  # import fails as if not installed
    plots.land_mask.cache_clear()
    try:
        ax = Figure().subplots()
        assert not plots.draw_coastlines(ax)
        assert "maps" in ax.texts[0].get_text()
        grid = IcoGrid(2)
        path = plots.save_mask_maps(tmp_path / "m.png", grid.latlon, np.zeros(grid.num_vertices, int),
                                    ["BG", "TC", "AR"])
        assert path.stat().st_size > 5_000
    finally:
        plots.land_mask.cache_clear()


def test_prediction_map_shades_by_probability(tmp_path) -> None:
    lat, lon = np.linspace(-90, 90, 31), np.arange(-180.0, 180.0, 6.0)
    labels = np.zeros((31, 60), int)
    labels[10:14, 5:9], labels[20:22, 30:50] = 1, 2
    rgba = plots._class_overlay(labels, ["BG", "TC", "AR"], np.full(labels.shape, 0.6))
    assert (rgba[labels == 0, 3] == 0).all() and np.allclose(rgba[labels > 0, 3], 0.6)
    assert np.allclose(rgba[labels == 1, 0], rgba[10, 5, 0]) and rgba[10, 5, 0] > rgba[20, 30, 0]  # TC red
    path = plots.save_latlon_prediction_map(tmp_path / "p.png", lat, lon, labels, ["BG", "TC", "AR"],
                                            np.full(labels.shape, 0.6), np.cos(np.deg2rad(lat))[:, None] * lon)
    assert path.stat().st_size > 10_000
