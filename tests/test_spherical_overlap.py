"""Exact overlap areas (datamodules.regrid.spherical_overlap) against independent references.

1. S2 (the `spherely` bindings): intersection areas of each Voronoi polygon with each lat-lon cell.
   S2 edges are geodesics, so the cells' parallels are densified (a chord per 0.05°, at least 256); the
   reference's own error is measured in each test (S2 area of a densified cell against the exact
   band area) and is ~1e-8 sr on these coarse cells, far below the 1e-5 required of per-vertex values.
2. Quadrature of the clipped great-circle integral.
3. The grid x level matrix: rows sum to the Voronoi areas, columns to the cell areas, integrals
   of noise kept both ways, on every grid layout the issue lists, levels 0-7 (5-7 marked slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.regrid import class_fractions, ico_to_latlon, latlon_to_ico, regrid_matrix
from datamodules.regrid.spherical_overlap import VoronoiEdges, clipped_integral, overlap_matrix
from icolightning.grid import IcoGrid


def _cell_areas(lat_bounds: np.ndarray, lon_bounds: np.ndarray) -> np.ndarray:
    band = np.abs(np.sin(np.deg2rad(lat_bounds[:, 1])) - np.sin(np.deg2rad(lat_bounds[:, 0])))
    return band[:, None] * np.deg2rad(np.abs(lon_bounds[:, 1] - lon_bounds[:, 0]))[None, :]


def _s2_reference(lat_bounds: np.ndarray, lon_bounds: np.ndarray, level: int) -> tuple[np.ndarray, float]:
    """(dense [N, nlat * nlon] overlaps from S2, the reference's own worst cell-area error)."""
    spherely = pytest.importorskip("spherely")
    grid = IcoGrid(level)

    def voronoi(v: int):
        ring = grid.ring[v, : grid.degree[v]]
        a, b, c = grid.xyz[v], grid.xyz[ring], grid.xyz[np.roll(ring, -1)]
        centres = np.cross(b - a, c - a)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        return spherely.create_polygon(list(zip(np.degrees(np.arctan2(centres[:, 1], centres[:, 0])),
                                                np.degrees(np.arcsin(centres[:, 2])), strict=True)))

    def cell(lat0: float, lat1: float, lon0: float, lon1: float):
        t = np.linspace(0.0, 1.0, max(256, int(20 * (lon1 - lon0))) + 1)  # a chord per 0.05 degrees
        south = [(lon0, -90.0)] if lat0 <= -90 else [(lon0 + (lon1 - lon0) * u, lat0) for u in t]
        north = [(lon0, 90.0)] if lat1 >= 90 else [(lon1 - (lon1 - lon0) * u, lat1) for u in t]
        return spherely.create_polygon(south + north)

    lat_bounds, lon_bounds = np.sort(lat_bounds, axis=1), np.sort(lon_bounds, axis=1)
    cells = np.array([cell(a, b, c, d) for a, b in lat_bounds for c, d in lon_bounds], dtype=object)
    own_error = np.abs(spherely.area(cells, radius=1.0) - _cell_areas(lat_bounds, lon_bounds).ravel()).max()
    polygons = np.array([voronoi(v) for v in range(grid.num_vertices)], dtype=object)
    reference = np.stack([spherely.area(spherely.intersection(polygons[[v] * cells.size], cells), radius=1.0)
                          for v in range(grid.num_vertices)])
    return reference, float(own_error)


def _gaussian_bounds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian latitudes (Legendre nodes) and their cell bounds (edges at the cumulative weights)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    edges = np.clip(np.concatenate([[-1.0], -1.0 + np.cumsum(weights)]), -1.0, 1.0)
    lat_edges = np.degrees(np.arcsin(edges))
    lat_edges[0], lat_edges[-1] = -90.0, 90.0
    return np.degrees(np.arcsin(nodes)), np.stack([lat_edges[:-1], lat_edges[1:]], axis=1)


REFERENCE_CASES = {
    # name: (lat_bounds, lon_bounds, level)
    "15x22.5_level2": (np.stack([np.arange(-90, 90, 15.0), np.arange(-75, 105, 15.0)], 1),
                       np.stack([np.arange(0, 360, 22.5), np.arange(22.5, 382.5, 22.5)], 1), 2),
    "descending_dateline_level1": (np.stack([np.arange(90, -90, -12.0), np.arange(78, -102, -12.0)], 1),
                                   np.stack([np.arange(-180, 180, 20.0) + 20, np.arange(-180, 180, 20.0)], 1), 1),
    "level0": (np.stack([np.arange(-90, 90, 18.0), np.arange(-72, 108, 18.0)], 1),
               np.stack([np.arange(0, 360, 30.0), np.arange(30, 390, 30.0)], 1), 0),
    # the north cell's edges run between longitudes 36 + 72k at latitude 52.6 and bulge to 58.3 at
    # 72k: with one column per edge the parallel at 56 crosses each edge twice, between its ends
    "level0_bulging_arcs": (np.array([[-90, -56], [-56, 0], [0, 56], [56, 90.0]]),
                            np.stack([36 + 72.0 * np.arange(5), 108 + 72.0 * np.arange(5)], 1), 0),
    # the mirror: the south cell's edges run between longitudes 72k at -52.6 and dip to -58.3 at
    # 36 + 72k; with one column per south edge the parallel at -56 crosses each twice between its ends
    "level0_dipping_arcs": (np.array([[-90, -56], [-56, 0], [0, 56], [56, 90.0]]),
                            np.stack([72.0 * np.arange(5), 72 + 72.0 * np.arange(5)], 1), 0),
    "gaussian_level2": (_gaussian_bounds(12)[1],
                        np.stack([np.arange(12) * 30.0 - 7, np.arange(1, 13) * 30.0 - 7], 1), 2),
    "regional_level3": (np.stack([np.arange(10, 70, 6.0), np.arange(16, 76, 6.0)], 1),
                        np.stack([np.arange(-40, 50, 7.5), np.arange(-32.5, 57.5, 7.5)], 1), 3),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_overlaps_and_vertex_means_match_s2(case) -> None:
    lat_bounds, lon_bounds, level = REFERENCE_CASES[case]
    reference, own_error = _s2_reference(lat_bounds, lon_bounds, level)
    assert own_error < 1e-7
    ours = overlap_matrix(lat_bounds, lon_bounds, IcoGrid(level)).toarray()
    assert ours.min() >= 0
    assert np.abs(ours - reference).max() < 10 * own_error + 1e-12
    # per-vertex means of a piecewise-constant field in [0, 1], through the public API
    lat, lon = lat_bounds.mean(1), lon_bounds.mean(1)
    field = np.random.default_rng(level).random((lat.size, lon.size))
    with np.errstate(invalid="ignore"):
        expected = reference @ field.ravel() / reference.sum(1)
    got = latlon_to_ico(field, lat, lon, level, "conservative", lat_bounds=lat_bounds, lon_bounds=lon_bounds)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) <= 1e-5
    # and back: each cell the mean of the vertex values over it
    vertex_field = np.random.default_rng(level + 1).random(IcoGrid(level).num_vertices)
    back = ico_to_latlon(vertex_field, lat, lon, "conservative", lat_bounds=lat_bounds, lon_bounds=lon_bounds)
    expected_back = (vertex_field @ reference / reference.sum(0)).reshape(lat.size, lon.size)
    assert np.abs(back - expected_back).max() <= 1e-5


def _s2_reference_pairs(lat_edges: np.ndarray, lon_edges: np.ndarray, level: int,
                        chords_per_degree: float = 20.0) -> tuple[np.ndarray, float]:
    """(dense [N, nlat * nlon] overlaps from S2, the reference's own worst cell-area error), with S2
    asked only about the (vertex, cell) pairs that can meet, pruned independently of the code under
    test: a Voronoi cell lies within the angle R_v of its vertex (its farthest corner), a lat-lon
    cell within R_c of its centre (its farthest densified boundary point), so a pair farther apart
    than R_v + R_c cannot overlap and is 0 in the reference."""
    spherely = pytest.importorskip("spherely")
    from scipy.spatial import cKDTree

    grid = IcoGrid(level)
    lat_bounds = np.stack([lat_edges[:-1], lat_edges[1:]], axis=1)
    lon_bounds = np.stack([lon_edges[:-1], lon_edges[1:]], axis=1)
    polygons, radius = [], np.empty(grid.num_vertices)
    for v in range(grid.num_vertices):
        ring = grid.ring[v, : grid.degree[v]]
        a, b, c = grid.xyz[v], grid.xyz[ring], grid.xyz[np.roll(ring, -1)]
        corners = np.cross(b - a, c - a)
        corners /= np.linalg.norm(corners, axis=1, keepdims=True)
        radius[v] = np.arccos(np.clip(corners @ a, -1, 1)).max()
        polygons.append(spherely.create_polygon(list(zip(np.degrees(np.arctan2(corners[:, 1], corners[:, 0])),
                                                         np.degrees(np.arcsin(corners[:, 2])), strict=True))))
    cells, centres, cell_radius = [], [], 0.0
    for lat0, lat1 in lat_bounds:
        for lon0, lon1 in lon_bounds:
            t = np.linspace(0.0, 1.0, max(16, int(chords_per_degree * (lon1 - lon0))) + 1)
            south = [(lon0, -90.0)] if lat0 <= -90 else [(lon0 + (lon1 - lon0) * u, lat0) for u in t]
            north = [(lon0, 90.0)] if lat1 >= 90 else [(lon1 - (lon1 - lon0) * u, lat1) for u in t]
            cells.append(spherely.create_polygon(south + north))
            lon_lat = np.deg2rad(np.array(south + north))
            boundary = np.stack([np.cos(lon_lat[:, 1]) * np.cos(lon_lat[:, 0]),
                                 np.cos(lon_lat[:, 1]) * np.sin(lon_lat[:, 0]), np.sin(lon_lat[:, 1])], axis=1)
            phi, lam = np.deg2rad(0.5 * (lat0 + lat1)), np.deg2rad(0.5 * (lon0 + lon1))
            centre = np.array([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
            cell_radius = max(cell_radius, float(np.arccos(np.clip(boundary @ centre, -1, 1)).max()))
            centres.append(centre)
    cells = np.array(cells, dtype=object)
    own_error = np.abs(spherely.area(cells, radius=1.0) - _cell_areas(lat_bounds, lon_bounds).ravel()).max()
    tree = cKDTree(np.array(centres))
    vertex, cell = [], []
    for v in range(grid.num_vertices):
        reach = min(radius[v] + cell_radius + 1e-6, np.pi)
        near = tree.query_ball_point(grid.xyz[v], 2 * np.sin(reach / 2))
        vertex += [v] * len(near)
        cell += near
    vertex, cell = np.array(vertex), np.array(cell)
    reference = np.zeros((grid.num_vertices, cells.size))
    reference[vertex, cell] = spherely.area(
        spherely.intersection(np.array(polygons, dtype=object)[vertex], cells[cell]), radius=1.0)
    return reference, float(own_error)


def _node_edges(centres: np.ndarray, pole_rows: bool) -> np.ndarray:
    """Cell edges midway between centres, the outermost at the poles (node grids with pole points)."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[-90.0 if pole_rows else 2 * centres[0] - mid[0]], mid,
                           [90.0 if pole_rows else 2 * centres[-1] - mid[-1]]])


@pytest.mark.parametrize(("spacing", "level"), [(5.0, 3), pytest.param(2.5, 4, marks=pytest.mark.slow)])
def test_node_grids_with_pole_points_match_s2(spacing, level) -> None:
    """The issue's two grids (the sub-sampled overlaps were off by 0.024 and 0.028 per vertex)
    through the public API without bounds, so the cells, pole caps included, come from
    `source_cells`; against S2 on cells written out here (pole caps [90 - spacing/2, 90], columns
    centred on the longitudes), parallels densified to a chord per 0.05 degrees. Measured: overlaps
    within 4.4x (5 deg -> 3) and 9.2x (2.5 deg -> 4) S2's own cell-area error (4.8e-10, 1.2e-10 sr),
    per-vertex means within 1.5e-7 and 3.3e-7; required: 20x and 1e-5. 2.5 deg -> 4 marked slow (5 s)."""
    lat, lon = np.linspace(-90, 90, round(180 / spacing) + 1), np.arange(round(360 / spacing)) * spacing
    lat_edges = _node_edges(lat, pole_rows=True)
    lon_edges = np.append(lon - spacing / 2, lon[-1] + spacing / 2)
    reference, own_error = _s2_reference_pairs(lat_edges, lon_edges, level)
    assert own_error < 1e-7
    ico = IcoGrid(level)
    np.testing.assert_allclose(reference.sum(1), ico.areas, rtol=1e-6)  # the pruning lost nothing
    from datamodules.regrid import LatLonGrid
    from datamodules.regrid.conservative import overlaps, source_cells

    grid = LatLonGrid.from_coords(lat, lon)
    ours = overlaps(grid, ico, source_cells(grid)).toarray()
    assert ours.min() >= 0
    assert np.abs(ours - reference).max() < 20 * own_error + 1e-12
    field = np.random.default_rng(level).random((lat.size, lon.size))
    expected = reference @ field.ravel() / reference.sum(1)
    got = latlon_to_ico(field, lat, lon, level, "conservative")
    assert np.abs(got - expected).max() <= 1e-5
    vertex_field = np.random.default_rng(level + 1).random(ico.num_vertices)
    back = ico_to_latlon(vertex_field, lat, lon, "conservative")
    expected_back = (vertex_field @ reference / reference.sum(0)).reshape(lat.size, lon.size)
    assert np.abs(back - expected_back).max() <= 1e-5
    labels = (field > 0.6).astype(np.int8) + (field > 0.9)
    expected_fractions = np.stack([reference @ (labels.ravel() == k) for k in range(3)]) / reference.sum(1)
    assert np.abs(class_fractions(labels, lat, lon, level, 3) - expected_fractions).max() <= 1e-5


def test_clipped_integral_matches_quadrature() -> None:
    """∫ (clip(z, z_lo, z_hi) - z_lo) dλ along random great circles, against 200 001-point Simpson."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(40, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal[normal[:, 2] < 0] *= -1
    alpha = rng.uniform(-np.pi, np.pi, 40)
    beta = alpha + rng.uniform(0.05, 2.5, 40)
    z = np.sort(rng.uniform(-0.9, 0.9, (40, 2)), axis=1)
    z[:5, 1] = 1.0  # bands reaching a pole
    exact = clipped_integral(normal, np.hypot(normal[:, 0], normal[:, 1]), np.arctan2(normal[:, 1], normal[:, 0]),
                             alpha, beta, z[:, 0], z[:, 1])
    t = np.linspace(0, 1, 200_001)
    lam = alpha[:, None] + (beta - alpha)[:, None] * t
    c = normal[:, :1] * np.cos(lam) + normal[:, 1:2] * np.sin(lam)
    on_circle = -c / np.sqrt(normal[:, 2:] ** 2 + c**2)
    integrand = np.clip(on_circle, z[:, :1], z[:, 1:]) - z[:, :1]
    h = (beta - alpha) / (t.size - 1)
    simpson = h / 3 * (integrand[:, 0] + integrand[:, -1] + 4 * integrand[:, 1:-1:2].sum(1)
                       + 2 * integrand[:, 2:-1:2].sum(1))
    np.testing.assert_allclose(exact, simpson, atol=1e-9)


def test_voronoi_edges_close_and_give_the_voronoi_areas() -> None:
    """Each cell's directed edges span no net longitude (2π for the two pole cells), and shared
    edges are stored once, so the two sides cancel exactly."""
    grid = IcoGrid(3)
    edges = VoronoiEdges(grid)
    signed = np.where(edges.forward, 1.0, -1.0) * edges.dlon[edges.edge_id] * edges.valid
    total = signed.sum(1)
    north, south = grid.pole_ids
    assert edges.poles == (north, south)
    np.testing.assert_allclose(total[north], 2 * np.pi, rtol=1e-12)
    np.testing.assert_allclose(total[south], -2 * np.pi, rtol=1e-12)
    others = np.delete(total, [north, south])
    assert np.abs(others).max() < 1e-12
    uses = np.bincount(edges.edge_id[edges.valid])
    assert set(uses[uses > 0].tolist()) == {2} and (uses > 0).sum() == 3 * (grid.num_vertices - 2)


def _layout(kind: str, spacing: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """(lat, lon, bounds kwargs) of a global grid layout."""
    n = round(180 / spacing)
    if kind == "nodes_with_poles":  # ClimateNet-like: rows at +-90
        return np.linspace(-90, 90, n + 1), np.arange(2 * n) * spacing, {}
    if kind == "centred_0_360":
        return np.arange(n) * spacing - 90 + spacing / 2, np.arange(2 * n) * spacing + spacing / 2, {}
    if kind == "centred_descending_dateline":
        return (np.arange(n) * spacing - 90 + spacing / 2)[::-1], np.arange(2 * n) * spacing - 180 + spacing / 2, {}
    if kind == "gaussian_bounds":
        lat, lat_bounds = _gaussian_bounds(n)
        lon = np.arange(2 * n) * spacing
        lon_bounds = np.stack([lon - spacing / 2, lon + spacing / 2], axis=1)
        return lat[::-1], lon, {"lat_bounds": lat_bounds[::-1], "lon_bounds": lon_bounds}
    if kind == "gaussian_midpoints":
        return _gaussian_bounds(n)[0], np.arange(2 * n) * spacing, {}
    raise ValueError(kind)


LAYOUTS = ("nodes_with_poles", "centred_0_360", "centred_descending_dateline", "gaussian_bounds",
           "gaussian_midpoints")


def _check_global(kind: str, spacing: float, level: int) -> None:
    _check_exactly_conservative(*_layout(kind, spacing), level)


def _check_exactly_conservative(lat: np.ndarray, lon: np.ndarray, bounds: dict, level: int) -> None:
    """Rows sum to the Voronoi areas, columns to the cell areas, and the integral of noise is kept
    both ways through the public API, on a global grid."""
    from datamodules.regrid import LatLonGrid
    from datamodules.regrid.conservative import overlaps, source_cells

    grid, ico = LatLonGrid.from_coords(lat, lon), IcoGrid(level)
    cells = source_cells(grid, bounds.get("lat_bounds"), bounds.get("lon_bounds"))
    overlap = overlaps(grid, ico, cells).tocsr()
    assert overlap.data.min() > 0
    np.testing.assert_allclose(np.asarray(overlap.sum(1)).ravel(), ico.areas, rtol=1e-9)
    sorted_areas = cells.areas()
    areas = np.empty_like(sorted_areas)
    areas[np.ix_(grid.lat_order, grid.lon_order)] = sorted_areas
    np.testing.assert_allclose(np.asarray(overlap.sum(0)).ravel(), areas.ravel(), rtol=1e-9)
    noise = np.random.default_rng(level).normal(size=(lat.size, lon.size)) + 3.0
    vertices = latlon_to_ico(noise, lat, lon, level, "conservative", **bounds)
    scale = (np.abs(noise) * areas).sum()
    assert abs((vertices * ico.areas).sum() - (noise * areas).sum()) / scale < 1e-10
    back = ico_to_latlon(vertices, lat, lon, "conservative", **bounds)
    assert abs((back * areas).sum() - (vertices * ico.areas).sum()) / scale < 1e-10


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize(("level", "spacing"), [(0, 10.0), (1, 7.5), (2, 5.0), (3, 5.0), (4, 2.5)])
def test_every_layout_and_coarse_level_is_exactly_conservative(kind, level, spacing) -> None:
    _check_global(kind, spacing, level)


@pytest.mark.slow
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize(("level", "spacing"), [(5, 1.0), (5, 0.5), (6, 2.5), (6, 0.5), (7, 1.0), (7, 10.0)])
def test_every_layout_and_fine_level_is_exactly_conservative(kind, level, spacing) -> None:
    _check_global(kind, spacing, level)


ISSUE_GRIDS = {
    # the grid x level matrix of issue 19; the sub-sampled, fitted weights failed on 5 of the 15:
    # the first three at level 5, the last two at level 6
    "1deg_centred": (np.arange(180) - 89.5, np.arange(360) + 0.5),
    "0.5deg_centred": (np.arange(360) * 0.5 - 89.75, np.arange(720) * 0.5 + 0.25),
    "2deg_centred_dateline": (np.arange(90) * 2.0 - 89.0, np.arange(180) * 2.0 - 179.0),
    "2.5deg_nodes_with_poles": (np.linspace(-90, 90, 73), np.arange(144) * 2.5),
    "climatenet_768x1152": (np.linspace(-90, 90, 768), np.arange(1152) * 0.3125),
}


@pytest.mark.parametrize(
    ("name", "level"),
    [pytest.param(name, level, marks=[pytest.mark.slow] if level == 6 and name != "2.5deg_nodes_with_poles" else [])
     for level in (3, 5, 6) for name in ISSUE_GRIDS],
)
def test_the_issue_grid_level_matrix_builds_and_is_exactly_conservative(name, level) -> None:
    """Every combination builds (the fitted weights raised 'did not converge' or 'the row fit
    would make an overlap negative' on five), with positive weights, a constant kept to round-off, and
    rows and columns summing to the Voronoi and cell areas. Level 6 but one marked slow (6 s)."""
    lat, lon = ISSUE_GRIDS[name]
    matrix = regrid_matrix(lat, lon, level, "conservative")
    assert matrix.covered.all() and matrix.weights.min() > 0
    np.testing.assert_allclose(latlon_to_ico(np.ones((lat.size, lon.size)), lat, lon, level, "conservative"), 1.0,
                               rtol=1e-12)
    _check_exactly_conservative(lat, lon, {}, level)


@pytest.mark.parametrize("level", [3, 5, *(pytest.param(level, marks=pytest.mark.slow) for level in (6, 7))])
def test_regional_grid_keeps_the_covered_integral(level) -> None:
    """A patch across the date line: vertices outside are NaN, vertices inside get the mean over the
    covered part of their cell, and sum(covered area x value) equals the patch integral."""
    lat, lon = np.arange(-30.0, 40.0, 2.0), np.mod(np.arange(150.0, 250.0, 2.5), 360.0)
    ico = IcoGrid(level)
    field = np.random.default_rng(5).random((lat.size, lon.size))
    out = latlon_to_ico(field, lat, lon, level, "conservative")
    from datamodules.regrid import LatLonGrid
    from datamodules.regrid.conservative import overlaps, source_cells

    grid = LatLonGrid.from_coords(lat, lon)
    cells = source_cells(grid)
    overlap = overlaps(grid, ico, cells).tocsr()
    covered = np.asarray(overlap.sum(1)).ravel()
    assert np.isnan(out[covered == 0]).all() and np.isfinite(out[covered > 0]).all()
    assert (covered <= ico.areas * (1 + 1e-9)).all()  # round-off grows to ~2e-11 at level 6
    inside = np.isclose(covered, ico.areas, rtol=1e-10)
    assert 0 < inside.sum() < (covered > 0).sum()  # some vertices wholly inside, some on the rim
    areas = np.empty((lat.size, lon.size))
    areas[np.ix_(grid.lat_order, grid.lon_order)] = cells.areas()
    np.testing.assert_allclose(np.nansum(out * covered), (field * areas).sum(), rtol=1e-12)
    back = ico_to_latlon(np.where(np.isnan(out), 0.0, out), lat, lon, "conservative")
    assert np.isfinite(back).all()


def test_regional_cells_extend_half_a_spacing_beyond_the_outer_centres() -> None:
    """Without bounds, a regional grid's cells are centred on its points, the outer ones too: the
    same weights as the bounds written out here, and the vertices' covered areas add up to the
    patch's exact area (sin-latitude band x longitude width)."""
    lat, lon = np.arange(12.0, 60.0, 3.0), np.mod(np.arange(160.0, 230.0, 2.5), 360.0)
    level = 4
    lat_bounds = np.stack([lat - 1.5, lat + 1.5], axis=1)
    lon_bounds = np.stack([lon - 1.25, lon + 1.25], axis=1)
    field = np.random.default_rng(11).random((lat.size, lon.size))
    out = latlon_to_ico(field, lat, lon, level, "conservative")
    np.testing.assert_allclose(out, latlon_to_ico(field, lat, lon, level, "conservative", lat_bounds=lat_bounds,
                                                  lon_bounds=lon_bounds), rtol=1e-12)
    covered = np.asarray(overlap_matrix(lat_bounds, lon_bounds, IcoGrid(level)).sum(1)).ravel()
    patch = (np.sin(np.deg2rad(lat[-1] + 1.5)) - np.sin(np.deg2rad(lat[0] - 1.5))) * np.deg2rad(lon.size * 2.5)
    np.testing.assert_allclose(covered.sum(), patch, rtol=1e-12)
    matrix = regrid_matrix(lat, lon, level, "conservative")
    np.testing.assert_array_equal(matrix.covered, covered > 0)


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
def test_regional_grid_every_coarse_level(level) -> None:
    lat, lon = np.linspace(-60, 10, 29), np.arange(-20.0, 90.0, 2.5)
    matrix = regrid_matrix(lat, lon, level, "conservative")
    assert matrix.covered.any() and matrix.weights.min() > 0
    out = latlon_to_ico(np.full((lat.size, lon.size), 2.0), lat, lon, level, "conservative")
    np.testing.assert_allclose(out[matrix.covered], 2.0, rtol=1e-12)


def test_a_repeated_cyclic_column_is_one_cell_and_is_filled_back() -> None:
    lat, lon = np.arange(-87.5, 90, 5.0), np.arange(0, 361, 5.0)  # 360 repeats 0
    field = np.random.default_rng(6).random((lat.size, lon.size))
    field[:, -1] = field[:, 0]
    vertices = latlon_to_ico(field, lat, lon, 3, "conservative")
    np.testing.assert_array_equal(vertices, latlon_to_ico(field[:, :-1], lat, lon[:-1], 3, "conservative"))
    back = ico_to_latlon(vertices, lat, lon, "conservative")
    np.testing.assert_array_equal(back[:, -1], back[:, 0])
    np.testing.assert_array_equal(back[:, :-1], ico_to_latlon(vertices, lat, lon[:-1], "conservative"))
    labels = (field > 0.5).astype(np.int8)
    assert ico_to_latlon(latlon_to_ico(labels, lat, lon, 3, "majority"), lat, lon, "majority").dtype == np.int8


@pytest.mark.parametrize("north", [True, False])
@pytest.mark.parametrize("level", [2, 3])
def test_a_polar_cap_grid_covers_the_pole_cells(north, level) -> None:
    """A regional grid of only polar rows (0.5-degree nodes from the pole point to 80 degrees): its
    rows are all shorter in sin-latitude (<= 0.0015) than the pole vertex's cell is tall (0.008 at
    level 2, 0.002 at level 3), so that cell must reach them by its own extent (z down to -1 or up
    to 1), not by the height of the grid's tallest row. Every vertex whose Voronoi cell lies inside
    the cap is fully covered; the cap's integral is kept."""
    from datamodules.regrid import LatLonGrid
    from datamodules.regrid.conservative import overlaps, source_cells

    sign = 1.0 if north else -1.0
    lat, lon = sign * np.linspace(90.0, 80.0, 21), np.arange(720) * 0.5
    ico = IcoGrid(level)
    grid = LatLonGrid.from_coords(lat, lon)
    cells = source_cells(grid)
    covered = np.asarray(overlaps(grid, ico, cells).tocsr().sum(1)).ravel()
    # a vertex's cell lies inside the cap when all its Voronoi corners (the circumcentres of the
    # triangles around it) lie beyond 80.25 degrees
    corners = np.cross(ico.xyz[ico.ring] - ico.xyz[:, None], ico.xyz[np.roll(ico.ring, -1, axis=1)] - ico.xyz[:, None])
    with np.errstate(invalid="ignore"):  # the last slot of a degree-5 vertex is degenerate (masked below)
        corners /= np.linalg.norm(corners, axis=-1, keepdims=True)
    corner_lat = np.degrees(np.arcsin(corners[..., 2]))
    valid = np.arange(ico.ring.shape[1])[None, :] < ico.degree[:, None]
    inside = np.where(valid, sign * corner_lat > 80.25, True).all(axis=1)
    pole = ico.pole_ids[0 if north else 1]
    assert inside[pole] and inside.sum() >= 1
    np.testing.assert_allclose(covered[inside], ico.areas[inside], rtol=1e-9)
    field = np.random.default_rng(level).random((lat.size, lon.size))
    out = latlon_to_ico(field, lat, lon, level, "conservative")
    areas = np.empty((lat.size, lon.size))
    areas[np.ix_(grid.lat_order, grid.lon_order)] = cells.areas()
    assert np.isfinite(out[pole])
    np.testing.assert_allclose(np.nansum(out * covered), (field * areas).sum(), rtol=1e-12)
