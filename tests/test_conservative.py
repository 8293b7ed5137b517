"""Conservative regridding and majority labels: global integrals, accuracy against Monte-Carlo
Voronoi means, CF bounds, any grid ordering, missing values, the cache key. The exact overlaps
themselves are tested against S2 in test_spherical_overlap.py."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.spatial import cKDTree

from datamodules.cache.entries import PreprocessConfig, ensure_cache
from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.convert import regrid_netcdf
from datamodules.regrid import class_fractions, clear_matrix_cache, ico_to_latlon, latlon_to_ico, regrid_matrix
from icolightning.grid import IcoGrid


def _band_areas(lat_lo: np.ndarray, lat_hi: np.ndarray, lon_width_deg: np.ndarray) -> np.ndarray:
    """Exact lat-lon cell areas [nlat, nlon] on the unit sphere, written out independently."""
    band = np.abs(np.sin(np.deg2rad(lat_hi)) - np.sin(np.deg2rad(lat_lo)))
    return band[:, None] * np.deg2rad(lon_width_deg)[None, :]


def _grid(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(lat, lon, exact cell areas in the caller's order, bounds kwargs) of a global test grid."""
    if kind == "ascending_with_poles":  # ClimateNet-like: rows at -90 and 90, cells clipped at the poles
        lat, lon = np.linspace(-90, 90, 37), np.arange(72) * 5.0
        edges = np.concatenate([[-90], 0.5 * (lat[1:] + lat[:-1]), [90]])
        return lat, lon, _band_areas(edges[:-1], edges[1:], np.full(72, 5.0)), {}
    if kind == "descending_centred_dateline":  # cell centres, north first, longitudes -180..180
        lat, lon = np.arange(87.5, -90, -5.0), np.arange(-180, 180, 6.0) + 3.0
        return lat, lon, _band_areas(lat + 2.5, lat - 2.5, np.full(60, 6.0)), {}
    if kind == "cf_bounds":  # irregular rows and columns, bounds given (not midway between centres)
        rng = np.random.default_rng(3)
        lat_edges = np.sort(np.concatenate([[-90, 90], rng.uniform(-89, 89, 30)]))
        lon_edges = np.sort(rng.uniform(0, 360, 50))
        lon_edges = np.append(lon_edges, lon_edges[0] + 360)
        lat = lat_edges[:-1] + 0.3 * np.diff(lat_edges)
        lon = np.mod(lon_edges[:-1] + 0.7 * np.diff(lon_edges), 360)
        bounds = {"lat_bounds": np.stack([lat_edges[:-1], lat_edges[1:]], 1),
                  "lon_bounds": np.stack([lon_edges[:-1], lon_edges[1:]], 1)}
        return lat, lon, _band_areas(lat_edges[:-1], lat_edges[1:], np.diff(lon_edges)), bounds
    raise ValueError(kind)


GRIDS = ("ascending_with_poles", "descending_centred_dateline", "cf_bounds")


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("level", [2, 3])
def test_global_integral_of_noise_is_preserved_both_ways(kind, level) -> None:
    lat, lon, cell_areas, bounds = _grid(kind)
    assert cell_areas.sum() == pytest.approx(4 * np.pi, rel=1e-12)
    areas = IcoGrid(level).areas
    offsets = np.array([0.0, 5.0, -2.0])[:, None, None]
    noise = np.random.default_rng(level).normal(size=(3, lat.size, lon.size)) + offsets
    vertices = latlon_to_ico(noise, lat, lon, level, "conservative", **bounds)
    source_total = (noise * cell_areas).sum(axis=(1, 2))
    scale = (np.abs(noise) * cell_areas).sum(axis=(1, 2))
    np.testing.assert_array_less(np.abs((vertices * areas).sum(-1) - source_total) / scale, 1e-10)
    back = ico_to_latlon(vertices, lat, lon, "conservative", **bounds)
    np.testing.assert_array_less(np.abs((back * cell_areas).sum((1, 2)) - (vertices * areas).sum(-1)) / scale, 1e-10)
    single = latlon_to_ico(noise.astype(np.float32), lat, lon, level, "conservative", **bounds)
    assert single.dtype == np.float32
    np.testing.assert_array_less(np.abs((single * areas).sum(-1) - source_total) / scale, 1e-6)


def test_constant_stays_constant_and_weights_are_positive() -> None:
    lat, lon, _, _ = _grid("descending_centred_dateline")
    matrix = regrid_matrix(lat, lon, 3, "conservative")
    assert matrix.weights.min() > 0
    np.testing.assert_allclose(latlon_to_ico(np.full((lat.size, lon.size), 7.0), lat, lon, 3, "conservative"), 7.0,
                               rtol=1e-12)
    np.testing.assert_allclose(ico_to_latlon(np.full(IcoGrid(3).num_vertices, 7.0), lat, lon, "conservative"), 7.0,
                               rtol=1e-12)


def _smooth(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    p, q = np.deg2rad(lat), np.deg2rad(lon)
    return np.cos(p) ** 2 * np.cos(4 * q) + np.sin(3 * p)


def test_conservative_gives_voronoi_cell_means_of_a_smooth_field() -> None:
    """Reference: the mean over 10^6 uniform points of each Voronoi cell (nearest vertex). Measured
    rms error: conservative 0.0032 (exact overlaps; what is left is the field's variation inside a
    2.5-degree cell plus Monte-Carlo noise ~0.003), bilinear (point values) 0.048."""
    level = 2
    grid = IcoGrid(level)
    points = np.random.default_rng(0).normal(size=(1_000_000, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    owner = cKDTree(grid.xyz).query(points)[1]
    values = _smooth(np.rad2deg(np.arcsin(points[:, 2])), np.rad2deg(np.arctan2(points[:, 1], points[:, 0])))
    reference = np.bincount(owner, values) / np.bincount(owner)
    lat, lon = np.linspace(-90, 90, 91), np.arange(144) * 2.5
    field = _smooth(lat[:, None], lon[None, :])
    rms = {m: np.sqrt(((latlon_to_ico(field, lat, lon, level, m) - reference) ** 2).mean())
           for m in ("conservative", "bilinear")}
    assert rms["conservative"] < 0.008
    assert rms["conservative"] < 0.2 * rms["bilinear"]


def test_missing_cells_leave_the_weights() -> None:
    lat, lon, _, _ = _grid("ascending_with_poles")
    field = np.random.default_rng(1).normal(size=(lat.size, lon.size))
    holed = field.copy()
    holed[10:20, 5:30] = np.nan
    matrix = regrid_matrix(lat, lon, 3, "conservative").to_scipy()
    valid = ~np.isnan(holed.reshape(-1))
    with np.errstate(invalid="ignore"):
        expected = (matrix @ np.where(valid, holed.reshape(-1), 0.0)) / (matrix @ valid.astype(float))
    assert np.isnan(expected).any()  # some vertices lie wholly inside the hole
    out = latlon_to_ico(holed, lat, lon, 3, "conservative")
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    untouched = (matrix @ (~valid).astype(float)) == 0
    assert 0 < untouched.sum() < untouched.size
    np.testing.assert_allclose(out[untouched], latlon_to_ico(field, lat, lon, 3, "conservative")[untouched], rtol=1e-12)


def test_majority_labels_preserve_class_areas_through_fractions() -> None:
    lat, lon, cell_areas, _ = _grid("descending_centred_dateline")
    rng = np.random.default_rng(2)
    labels = np.zeros((lat.size, lon.size), np.int16)
    labels[5:12, 10:40] = 1  # a large block of class 1 across several vertex cells
    labels[rng.random(labels.shape) < 0.05] = 2  # scattered class-2 cells
    fractions = class_fractions(labels, lat, lon, 3, 3)
    areas = IcoGrid(3).areas
    np.testing.assert_allclose(fractions.sum(0), 1.0, rtol=1e-12)
    for k in range(3):
        assert (fractions[k] * areas).sum() == pytest.approx(((labels == k) * cell_areas).sum(), rel=1e-10)
    majority = latlon_to_ico(labels, lat, lon, 3, "majority")
    assert majority.dtype == np.int16
    np.testing.assert_array_equal(majority, fractions.argmax(0))
    assert (majority[fractions[1] > 0.5] == 1).all() and (majority == 1).sum() > 3
    back = ico_to_latlon(majority, lat, lon, "majority")
    assert back.dtype == np.int16 and back.shape == labels.shape
    assert np.mean(back == labels) > 0.85


def test_cache_and_regrid_tool_use_the_methods_and_cf_bounds(tmp_path) -> None:
    """A file with CF bounds: the cache (conservative fields, majority labels) and
    icolightning-regrid give exactly latlon_to_ico with those bounds, which differ from midpoints."""
    source = generate_dataset(tmp_path / "data", n_train=1, n_test=0, nlat=31, nlon=50, seed=4)[0]
    lat, lon, _, bounds = _grid("cf_bounds")
    with xr.open_dataset(source) as ds:
        ds = ds[["TMQ", "LABELS"]].load()
    moved = ds.assign_coords(lat=lat, lon=lon)
    moved["lat"].attrs.update(units="degrees_north", bounds="lat_bnds")
    moved["lon"].attrs.update(units="degrees_east", bounds="lon_bnds")
    moved["lat_bnds"] = (("lat", "nv"), bounds["lat_bounds"])
    moved["lon_bnds"] = (("lon", "nv"), bounds["lon_bounds"])
    path = tmp_path / "bounded.nc"
    moved.to_netcdf(path)
    tmq = moved["TMQ"].values.reshape(-1, lat.size, lon.size)
    labels = moved["LABELS"].values.reshape(lat.size, lon.size)
    expected_tmq = latlon_to_ico(tmq, lat, lon, 2, "conservative", **bounds)
    expected_labels = latlon_to_ico(labels, lat, lon, 2, "majority", **bounds)
    assert not np.allclose(expected_tmq, latlon_to_ico(tmq, lat, lon, 2, "conservative"), rtol=1e-3)

    config = PreprocessConfig(2, ("TMQ",), "conservative", label_method="majority")
    (entry,) = ensure_cache([path], config, tmp_path / "cache", progress=False)
    np.testing.assert_allclose(entry.fields()[:, 0], expected_tmq.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(entry.labels()[0], expected_labels)
    nearest = PreprocessConfig(2, ("TMQ",), "conservative", label_method="nearest")
    assert nearest.folder_name() != config.folder_name() and "majority" in config.folder_name()

    out = regrid_netcdf(path, tmp_path / "ico.nc", 2, ["TMQ", "LABELS"], "conservative", False, "majority")
    with xr.open_dataset(out) as ico:
        np.testing.assert_allclose(ico["TMQ"].values, expected_tmq, rtol=1e-6)
        np.testing.assert_array_equal(ico["LABELS"].values.reshape(-1), expected_labels)


def test_missing_vertices_leave_the_weights_back() -> None:
    """ico_to_latlon: NaN vertices leave the overlaps, each cell is the mean over its valid
    Voronoi overlaps (NaN where none is valid), from the raw overlap areas written out here."""
    from datamodules.regrid import LatLonGrid
    from datamodules.regrid.conservative import overlaps, source_cells

    lat, lon, _, _ = _grid("descending_centred_dateline")
    ico = IcoGrid(3)
    grid = LatLonGrid.from_coords(lat, lon)
    area = overlaps(grid, ico, source_cells(grid)).tocsr()
    vertices = np.random.default_rng(8).normal(size=ico.num_vertices)
    vertices[ico.latlon[:, 0] > 55] = np.nan  # a polar cap: the cells inside it have no valid overlap
    vertices[::17] = np.nan  # scattered: cells on those Voronoi cells renormalise
    valid = np.isfinite(vertices)
    with np.errstate(invalid="ignore"):
        expected = (area.T @ np.where(valid, vertices, 0.0)) / (area.T @ valid.astype(float))
    back = ico_to_latlon(vertices, lat, lon, "conservative").reshape(-1)
    np.testing.assert_array_equal(np.isnan(back), np.isnan(expected))
    assert 0 < np.isnan(back).sum() < back.size // 4
    np.testing.assert_allclose(back, expected, rtol=1e-12)
    full = ico_to_latlon(np.nan_to_num(vertices), lat, lon, "conservative").reshape(-1)
    touched = (area.T @ (~valid).astype(float)) > 0
    assert ((back != full) & np.isfinite(back)).sum() > 0
    np.testing.assert_array_equal(back[~touched], full[~touched])


def test_masked_arrays_leave_the_weights_as_nan_does() -> None:
    """netCDF4 returns numpy masked arrays for variables with a _FillValue: the masked cells (here
    holding 1e20 underneath) must leave the weights exactly as NaN cells do, both ways."""
    lat, lon, _, _ = _grid("ascending_with_poles")
    rng = np.random.default_rng(7)
    field = rng.normal(size=(2, lat.size, lon.size)).astype(np.float32)
    mask = np.zeros(field.shape, bool)
    mask[:, 10:20, 5:30] = True
    masked = np.ma.masked_array(np.where(mask, np.float32(1e20), field), mask=mask)
    with_nan = np.where(mask, np.float32(np.nan), field)
    for method in ("conservative", "bilinear"):
        got = latlon_to_ico(masked, lat, lon, 3, method)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, latlon_to_ico(with_nan, lat, lon, 3, method))
        assert np.nanmax(np.abs(got)) < 10
    labels = (field[0] > 0.5).astype(np.int8)
    masked_labels = np.ma.masked_array(np.where(mask[0], 9, labels), mask=mask[0])
    nan_labels = np.where(mask[0], np.nan, labels)
    np.testing.assert_array_equal(class_fractions(masked_labels, lat, lon, 3, 2),
                                  class_fractions(nan_labels, lat, lon, 3, 2))
    np.testing.assert_array_equal(latlon_to_ico(masked_labels, lat, lon, 3, "majority"),
                                  latlon_to_ico(nan_labels, lat, lon, 3, "majority"))
    unmasked = np.ma.masked_array(labels)
    assert latlon_to_ico(unmasked, lat, lon, 3, "majority").dtype == np.int8
    vertices = latlon_to_ico(field[0].astype(np.float64), lat, lon, 3, "conservative")
    polar = IcoGrid(3).latlon[:, 0] > 55
    back = ico_to_latlon(np.ma.masked_array(np.where(polar, 1e20, vertices), mask=polar), lat, lon, "conservative")
    np.testing.assert_array_equal(back, ico_to_latlon(np.where(polar, np.nan, vertices), lat, lon, "conservative"))
    assert np.isnan(back).any() and np.nanmax(np.abs(back)) < 10


def test_cf_bounds_in_any_order_and_longitude_branch() -> None:
    """CF bounds may list a cell's edges either way round and on another 360-degree branch than the
    centres (e.g. [355, 5] for a column centred at 0, or 0..360 bounds for -180..180 centres): the
    same cells, the same weights."""
    lat, lon = np.arange(-87.5, 90, 5.0)[::-1], np.arange(-180.0, 180.0, 10.0)
    lat_bounds = np.stack([lat - 2.5, lat + 2.5], axis=1)
    lon_bounds = np.stack([lon - 5.0, lon + 5.0], axis=1)
    field = np.random.default_rng(9).random((lat.size, lon.size))
    plain = latlon_to_ico(field, lat, lon, 3, "conservative", lat_bounds=lat_bounds, lon_bounds=lon_bounds)
    wrapped = np.mod(lon_bounds, 360.0)
    assert ((wrapped[:, 1] < wrapped[:, 0]) | (wrapped.min(1) > lon)).any()  # some cells given across the seam
    other = latlon_to_ico(field, lat, lon, 3, "conservative", lat_bounds=lat_bounds[:, ::-1],
                          lon_bounds=wrapped[:, ::-1])
    np.testing.assert_allclose(other, plain, rtol=1e-12)
    back = ico_to_latlon(plain, lat, lon, "conservative", lat_bounds=lat_bounds, lon_bounds=lon_bounds)
    np.testing.assert_allclose(ico_to_latlon(plain, lat, lon, "conservative", lat_bounds=lat_bounds[:, ::-1],
                                             lon_bounds=wrapped[:, ::-1]), back, rtol=1e-12)


def test_the_caches_key_on_the_bounds() -> None:
    """Bounds for latitude only, longitude only, both or neither are four different sets of cells:
    in whatever order they are asked for, each gives what a fresh build gives, both ways."""
    lat, lon, _, bounds = _grid("cf_bounds")
    variants = [{}, {"lat_bounds": bounds["lat_bounds"]}, {"lon_bounds": bounds["lon_bounds"]}, bounds]
    field = np.random.default_rng(12).random((lat.size, lon.size))

    def both_ways(kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
        vertices = latlon_to_ico(field, lat, lon, 2, "conservative", **kwargs)
        return vertices, ico_to_latlon(vertices, lat, lon, "conservative", **kwargs)

    fresh = []
    for kwargs in variants:
        clear_matrix_cache()
        fresh.append(both_ways(kwargs))
    for i in range(len(variants)):
        for j in range(i):
            assert not np.allclose(fresh[i][0], fresh[j][0], rtol=1e-6)
    for order in (variants, variants[::-1]):
        clear_matrix_cache()
        for kwargs in order:
            expected = fresh[variants.index(kwargs)]
            got = both_ways(kwargs)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
    clear_matrix_cache()


def test_class_fractions_skip_missing_labels() -> None:
    """NaN labels leave the weights: each vertex's shares are over its valid cells only (sum 1),
    NaN only where none is valid, against the forward weights applied here."""
    lat, lon, _, _ = _grid("ascending_with_poles")
    labels = np.random.default_rng(13).integers(0, 3, (lat.size, lon.size)).astype(np.float64)
    labels[10:20, 5:30] = np.nan
    labels[::7, ::5] = np.nan
    weights = regrid_matrix(lat, lon, 3, "conservative").to_scipy()
    valid = np.isfinite(labels).reshape(-1)
    with np.errstate(invalid="ignore"):
        expected = np.stack([weights @ (labels.reshape(-1) == k) for k in range(3)]) / (weights @ valid)
    fractions = class_fractions(labels, lat, lon, 3, 3)
    np.testing.assert_array_equal(np.isnan(fractions), np.isnan(expected))
    assert 0 < np.isnan(fractions[0]).sum() < fractions.shape[1] // 4
    np.testing.assert_allclose(fractions, expected, rtol=1e-12)
    np.testing.assert_allclose(np.nansum(fractions, 0)[np.isfinite(fractions[0])], 1.0, rtol=1e-12)
