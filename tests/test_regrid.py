"""Regridding between lat-lon grids and the icosahedron: accuracy, orderings, poles, NaN, real files."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from datamodules.cache.entries import CACHE_VERSION, REGRID_FINGERPRINTS
from datamodules.regrid import (
    clear_matrix_cache,
    ico_to_latlon,
    latlon_to_ico,
    latlon_xyz,
    regrid_fingerprint,
    regrid_matrix,
)
from icolightning.grid import IcoGrid, level_of


def smooth_field(xyz: np.ndarray) -> np.ndarray:
    """A smooth, non-axisymmetric function on the sphere (finite everywhere, poles included)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.sin(2 * x) + y * z + np.cos(3 * z) + x * y**2


def sample(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return smooth_field(latlon_xyz(la, lo))


def pole_grid(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-90, 90, nlat), np.arange(nlon) * 360.0 / nlon


def centred_grid(nlat: int, nlon: int) -> tuple[np.ndarray, np.ndarray]:
    """First row half a spacing from the pole, like many model and reanalysis grids."""
    return -90 + 180.0 / nlat * (np.arange(nlat) + 0.5), np.arange(nlon) * 360.0 / nlon + 0.5


@pytest.mark.parametrize("make_grid", [pole_grid, centred_grid])
def test_bilinear_error_is_second_order_in_grid_spacing(make_grid) -> None:
    ico = IcoGrid(3)
    truth = smooth_field(ico.xyz)
    errors = []
    for nlat in (24, 48, 96):
        lat, lon = make_grid(nlat, 2 * nlat)
        errors.append(np.abs(latlon_to_ico(sample(lat, lon), lat, lon, 3) - truth).max())
        spacing = np.deg2rad(180.0 / nlat)
        assert errors[-1] <= 4.0 * spacing**2
    assert errors[0] / errors[1] > 3.0 and errors[1] / errors[2] > 3.0


def test_poles_take_the_ring_mean_beyond_the_last_row() -> None:
    lat, lon = centred_grid(36, 72)
    ico = IcoGrid(2)
    north, south = ico.pole_ids
    z_field = np.broadcast_to(np.sin(np.deg2rad(lat))[:, None], (36, 72))
    out = latlon_to_ico(z_field, lat, lon, 2)
    assert out[north] == pytest.approx(np.sin(np.deg2rad(lat[-1])), abs=1e-12)
    assert out[south] == pytest.approx(np.sin(np.deg2rad(lat[0])), abs=1e-12)
    x_field = latlon_xyz(*np.meshgrid(lat, lon, indexing="ij"))[..., 0]
    out = latlon_to_ico(x_field, lat, lon, 2)
    assert abs(out[north]) < 1e-12 and abs(out[south]) < 1e-12


def test_every_cf_ordering_gives_the_same_vertices() -> None:
    lat, lon = pole_grid(48, 96)
    values = sample(lat, lon)
    reference = latlon_to_ico(values, lat, lon, 3)
    signed_lon = np.where(lon >= 180, lon - 360, lon)
    order = np.argsort(signed_lon)
    variants = {
        "descending": (values[::-1], lat[::-1], lon),
        "minus180": (values[:, order], lat, signed_lon[order]),
        "float32": (values.astype(np.float32), lat.astype(np.float32), lon.astype(np.float32)),
        "cyclic column": (np.concatenate([values, values[:, :1]], 1), lat, np.append(lon, 360.0)),
        "both flipped": (values[::-1, order], lat[::-1], signed_lon[order]),
    }
    for name, (v, la, lo) in variants.items():
        out = latlon_to_ico(v, la, lo, 3)
        tol = 1e-5 if v.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, reference, atol=tol, err_msg=name)
        assert out.dtype == v.dtype


def test_periodic_in_longitude_across_the_wrap_gap() -> None:
    lat, lon = pole_grid(19, 36)
    lon = lon + 5.0
    field = np.broadcast_to(np.cos(np.deg2rad(lon))[None, :], (19, 36))
    ico = IcoGrid(3)
    out = latlon_to_ico(field, lat, lon, 3)
    in_gap = (np.mod(ico.latlon[:, 1] - 355.0, 360.0) < 10.0) & (np.abs(ico.latlon[:, 0]) < 80)
    assert in_gap.sum() > 5
    np.testing.assert_allclose(out[in_gap], np.cos(np.deg2rad(ico.latlon[in_gap, 1])), atol=0.01)


def test_leading_dimensions_pass_through() -> None:
    lat, lon = pole_grid(24, 48)
    stack = np.random.default_rng(0).normal(size=(2, 3, 24, 48))
    out = latlon_to_ico(stack, lat, lon, 2)
    assert out.shape == (2, 3, IcoGrid(2).num_vertices)
    np.testing.assert_allclose(out[1, 2], latlon_to_ico(stack[1, 2], lat, lon, 2))


def test_nearest_labels_match_brute_force_and_keep_dtype() -> None:
    lat, lon = centred_grid(30, 60)
    labels = np.random.default_rng(1).integers(0, 3, size=(30, 60)).astype(np.int16)
    out = latlon_to_ico(labels, lat, lon, 3, method="nearest")
    source = latlon_xyz(*np.meshgrid(lat, lon, indexing="ij")).reshape(-1, 3)
    cosines = IcoGrid(3).xyz @ source.T
    chosen = regrid_matrix(lat, lon, 3, "nearest").indices
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, labels.reshape(-1)[chosen])
    best = cosines.max(axis=1)
    np.testing.assert_allclose(cosines[np.arange(len(chosen)), chosen], best, rtol=0, atol=1e-15)


def test_ico_to_latlon_converges_and_nearest_round_trips() -> None:
    lat, lon = pole_grid(37, 72)
    truth = sample(lat, lon)
    errors = [np.abs(ico_to_latlon(smooth_field(IcoGrid(r).xyz), lat, lon) - truth).max() for r in (2, 3, 4)]
    assert errors[0] / errors[1] > 3.0 and errors[1] / errors[2] > 3.0 and errors[2] < 0.01
    vertex_labels = np.random.default_rng(2).integers(0, 3, IcoGrid(2).num_vertices)
    fine_lat, fine_lon = pole_grid(91, 180)
    mask = ico_to_latlon(vertex_labels, fine_lat, fine_lon, method="nearest")
    assert mask.shape == (91, 180) and mask.dtype == vertex_labels.dtype
    np.testing.assert_array_equal(latlon_to_ico(mask, fine_lat, fine_lon, 2, method="nearest"), vertex_labels)


def test_nan_sources_are_skipped_or_propagated_on_request() -> None:
    lat, lon = pole_grid(24, 48)
    values = sample(lat, lon)
    values[8:16, 10:30] = np.nan
    ico = IcoGrid(3)
    skipped = latlon_to_ico(values, lat, lon, 3)
    propagated = latlon_to_ico(values, lat, lon, 3, skipna=False)
    hole_lat = (ico.latlon[:, 0] > lat[8]) & (ico.latlon[:, 0] < lat[15])
    hole_lon = (ico.latlon[:, 1] > lon[10]) & (ico.latlon[:, 1] < lon[29])
    inside = hole_lat & hole_lon
    assert np.isnan(skipped[inside]).all() and inside.sum() > 5
    assert np.isnan(propagated).sum() > np.isnan(skipped).sum()
    untouched = ~np.isnan(propagated)
    np.testing.assert_allclose(skipped[untouched], propagated[untouched], rtol=1e-12)
    clean = latlon_to_ico(sample(lat, lon), lat, lon, 3)
    np.testing.assert_allclose(skipped[untouched], clean[untouched], rtol=1e-12)
    filled = ~np.isnan(skipped) & ~untouched
    assert filled.sum() > 5
    assert np.abs(skipped[filled] - smooth_field(ico.xyz)[filled]).max() < 0.5


def test_skipped_nan_gives_the_weighted_mean_of_the_valid_sources_in_every_row() -> None:
    """Checked against the dense matrix, polar caps (rows averaging a whole ring) included."""
    lat, lon = centred_grid(12, 24)
    values = np.stack([sample(lat, lon), sample(lat, lon) + 1.0]).astype(np.float32)
    values[1, 0, :20] = np.nan
    values[1, 5:7, 3:9] = np.nan
    dense = regrid_matrix(lat, lon, 2, "bilinear").to_scipy().toarray()
    flat = values.reshape(2, -1)
    valid = ~np.isnan(flat)
    with np.errstate(invalid="ignore"):
        expected = (np.where(valid, flat, 0) @ dense.T) / (valid @ dense.T)
    out = latlon_to_ico(values, lat, lon, 2)
    assert out.dtype == np.float32 and np.isnan(out[0]).sum() == 0 and np.isnan(out[1]).sum() > 0
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6)


def test_regional_grid_leaves_outside_targets_nan_and_refuses_integer_gaps() -> None:
    lat, lon = np.linspace(-30, 30, 31), np.linspace(-60, 60, 61)
    ico = IcoGrid(3)
    out = latlon_to_ico(sample(lat, lon), lat, lon, 3)
    vlat, vlon = ico.latlon.T
    inside = (np.abs(vlat) <= 30) & ((vlon <= 60) | (vlon >= 300))
    assert np.isfinite(out[inside]).all() and np.isnan(out[~inside]).all()
    with pytest.raises(ValueError, match="outside the source grid"):
        latlon_to_ico(np.zeros((31, 61), np.int64), lat, lon, 3, method="nearest")
    nearest = latlon_to_ico(np.zeros((31, 61)), lat, lon, 3, method="nearest")
    np.testing.assert_array_equal(np.isnan(nearest), ~inside)


def test_global_band_does_not_extrapolate_towards_the_poles() -> None:
    lat, lon = np.linspace(-60, 60, 25), np.arange(72) * 5.0
    ico = IcoGrid(3)
    out = latlon_to_ico(sample(lat, lon), lat, lon, 3)
    inside = np.abs(ico.latlon[:, 0]) <= 60
    assert np.isfinite(out[inside]).all() and np.isnan(out[~inside]).all()


def test_matrices_are_cached_per_grid_and_level() -> None:
    lat, lon = pole_grid(24, 48)
    first = regrid_matrix(lat, lon, 2, "bilinear")
    assert regrid_matrix(lat.copy(), lon.copy(), 2, "bilinear") is first
    assert regrid_matrix(lat, lon, 3, "bilinear") is not first
    weights = first.to_scipy()
    np.testing.assert_allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert (weights.data > 0).all()


@pytest.mark.parametrize(
    ("values_shape", "lat", "lon", "message"),
    [
        ((10, 20), np.linspace(-90, 90, 11), np.arange(20.0), "must end in"),
        ((3, 20), np.array([0.0, 10.0, 100.0]), np.arange(20.0), r"\[-90, 90\]"),
        ((3, 20), np.array([0.0, 10.0, 10.0]), np.arange(20.0), "strictly monotonic"),
    ],
)
def test_bad_grids_are_rejected(values_shape, lat, lon, message) -> None:
    with pytest.raises(ValueError, match=message):
        latlon_to_ico(np.zeros(values_shape), lat, lon, 2)


def test_level_of_rejects_non_icosahedral_sizes() -> None:
    assert level_of(IcoGrid(4).num_vertices) == 4
    with pytest.raises(ValueError, match="not an icosahedral"):
        ico_to_latlon(np.zeros(100), np.linspace(-90, 90, 5), np.arange(8.0))


# ------------------------------------------------------------------ real CF files shipped on PyPI
def package_data(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"optional dev dependency {package!r} is not installed (it ships the test file)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        pytest.skip(f"{package} is installed but does not ship {relative}")
    return path


def test_real_global_gaussian_grid_matches_an_independent_interpolator() -> None:
    """aospy ships GFDL model precipitation on a global T42 Gaussian grid (rows at ±87.86°)."""
    from scipy.interpolate import RegularGridInterpolator

    path = package_data("aospy", "test/data/netcdf/00040101.precip_monthly.nc")
    with xr.open_dataset(path, decode_times=False) as ds:
        rain = ds["convection_rain"].values.astype(np.float32)
        lat, lon = ds["lat"].values, ds["custom_lon"].values
    assert lat[0] > -90 and lat[-1] < 90 and rain.shape == (12, 64, 128)
    level = 3
    out = latlon_to_ico(rain, lat, lon, level)
    assert out.shape == (12, IcoGrid(level).num_vertices) and out.dtype == np.float32
    vlat, vlon = IcoGrid(level).latlon.T
    padded = np.concatenate([rain, rain[..., :1]], axis=-1)
    reference = RegularGridInterpolator((lat, np.append(lon, 360.0)), np.moveaxis(padded, 0, -1))
    interior = (vlat >= lat[0]) & (vlat <= lat[-1])
    expected = reference(np.stack([vlat[interior], vlon[interior]], 1)).T
    np.testing.assert_allclose(out[:, interior], expected, rtol=1e-5, atol=1e-12)
    cap = ~interior
    low = np.minimum(rain[:, :1].min(-1), rain[:, -1:].min(-1))
    high = np.maximum(rain[:, :1].max(-1), rain[:, -1:].max(-1))
    assert ((out[:, cap] >= low - 1e-12) & (out[:, cap] <= high + 1e-12)).all()
    areas = IcoGrid(level).areas
    weights = np.cos(np.deg2rad(lat))[:, None]
    source_mean = (rain * weights).sum((-1, -2)) / (weights.sum() * lon.size)
    np.testing.assert_allclose(out @ areas / areas.sum(), source_mean, rtol=0.03)


def test_real_sst_with_land_mask_handles_fill_values_explicitly() -> None:
    """eofs ships HadISST Pacific SST anomalies whose land points are _FillValue."""
    path = package_data("eofs", "examples/example_data/sst_ndjfm_anom.nc")
    with xr.open_dataset(path) as ds:
        sst = ds["sst"].values[:4]
        lat, lon = ds["latitude"].values, ds["longitude"].values
    land = np.isnan(sst[0])
    assert 0.05 < land.mean() < 0.6
    level = 4
    vlat, vlon = IcoGrid(level).latlon.T
    out = latlon_to_ico(sst, lat, lon, level)
    inside = (vlat >= lat.min()) & (vlat <= lat.max()) & (vlon >= lon.min()) & (vlon <= lon.max())
    assert np.isnan(out[:, ~inside]).all()
    finite = np.isfinite(out)
    assert finite[:, inside].mean() > 0.5
    assert np.nanmin(out) >= np.nanmin(sst) - 1e-9 and np.nanmax(out) <= np.nanmax(sst) + 1e-9
    strict = latlon_to_ico(sst, lat, lon, level, skipna=False)
    assert np.isfinite(strict).sum() < finite.sum()
    land_ico = latlon_to_ico(land.astype(np.float64), lat, lon, level, method="nearest")
    areas = IcoGrid(level).areas[inside]
    cell_weights = np.cos(np.deg2rad(lat))[:, None] * np.ones_like(land)
    land_fraction = (land * cell_weights).sum() / cell_weights.sum()
    assert (land_ico[inside] * areas).sum() / areas.sum() == pytest.approx(land_fraction, abs=0.03)
    all_land_sources = np.isnan(out[0]) & inside
    assert all_land_sources.sum() > 10 and (land_ico[all_land_sources] == 1).all()


def test_real_polar_cap_with_a_pole_row_and_negative_longitudes() -> None:
    """eofs' DJF 500 hPa height: 20–90°N, longitudes −80..40, rows include the pole itself."""
    path = package_data("eofs", "examples/example_data/hgt_djf.nc")
    with xr.open_dataset(path, decode_times=False) as ds:
        z = ds["z"].values
        lat, lon = ds["latitude"].values, ds["longitude"].values
    assert lat.max() == 90.0 and lon.min() < 0
    level = 3
    ico = IcoGrid(level)
    out = latlon_to_ico(z, lat, lon, level)
    assert out.shape == (*z.shape[:2], ico.num_vertices)
    north, south = ico.pole_ids
    np.testing.assert_allclose(out[..., north], z[..., list(lat).index(90.0), :].mean(-1), rtol=1e-12)
    assert np.isnan(out[..., south]).all()
    vlat, vlon = ico.latlon.T
    inside = (vlat >= 20) & ((vlon <= 40) | (vlon >= 280))
    assert np.isfinite(out[..., inside]).all() and np.isnan(out[..., ~inside & (vlat < 89)]).all()
    assert np.nanmin(out) >= z.min() - 1e-9 and np.nanmax(out) <= z.max() + 1e-9


def test_cache_version_follows_the_regridding() -> None:
    """Changing what regridding computes must bump the cache version, or old caches are reused."""
    fingerprint = regrid_fingerprint()
    pinned = REGRID_FINGERPRINTS.get(CACHE_VERSION)
    assert fingerprint == pinned, (
        f"the regridding changed (fingerprint {fingerprint}, pinned {pinned} for CACHE_VERSION {CACHE_VERSION}): "
        f"bump CACHE_VERSION in datamodules/cache/version.py and add the new fingerprint to REGRID_FINGERPRINTS"
    )
    assert max(REGRID_FINGERPRINTS) == CACHE_VERSION
    assert len(set(REGRID_FINGERPRINTS.values())) == len(REGRID_FINGERPRINTS)


def test_the_fingerprint_sees_a_change_of_the_weights(monkeypatch) -> None:
    import datamodules.regrid.remap as regrid

    original = regrid.bilinear_matrix

    def skewed(grid, tlat, tlon):
        matrix = original(grid, tlat, tlon)
        weights = matrix.weights * (1 + 1e-6)
        return regrid.RegridMatrix(matrix.indptr, matrix.indices, weights, matrix.num_sources, False)

    clear_matrix_cache()
    monkeypatch.setattr(regrid, "bilinear_matrix", skewed)
    try:
        assert regrid_fingerprint() != REGRID_FINGERPRINTS[CACHE_VERSION]
    finally:
        clear_matrix_cache()


def test_long_rows_run_in_torch_on_one_thread_and_match_scipy_for_any_layout(monkeypatch) -> None:
    """float32 and float64 rows of a matrix with long rows (conservative, here 15 weights per
    vertex) go through torch's CSR product on one thread (the caller's thread count restored
    afterwards) and give scipy's float64 product; reversed, strided and read-only inputs are
    copied for torch, not misread. Short rows (bilinear, 4 per vertex) stay with scipy."""
    import scipy.sparse
    import torch

    from datamodules.regrid import matrix as matrix_module

    lat, lon = centred_grid(24, 48)
    matrix = regrid_matrix(lat, lon, 2, "conservative")
    assert matrix.indices.size > matrix_module.TORCH_MIN_WEIGHTS_PER_ROW * matrix.num_targets
    values = np.random.default_rng(5).standard_normal((3, lat.size * lon.size))
    expected = np.stack([matrix.to_scipy() @ row for row in values])
    threads_seen, real_mv = [], torch.mv

    def recording_mv(*args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return real_mv(*args, **kwargs)

    monkeypatch.setattr(torch, "mv", recording_mv)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-13)):
            typed = values.astype(dtype)
            readonly = typed.copy()
            readonly.flags.writeable = False
            for layout in (typed, np.repeat(typed, 2, axis=1)[:, ::2], np.asfortranarray(typed), readonly):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # torch.from_numpy warns on a read-only array
                    out = matrix.apply(layout)
                assert out.dtype == dtype
                np.testing.assert_allclose(out, expected, rtol=rtol, atol=rtol)
            reversed_out = matrix.apply(typed[:, ::-1])  # a different source order: scipy on the copy
            np.testing.assert_allclose(reversed_out, np.stack([matrix.to_scipy() @ row[::-1] for row in values]),
                                       rtol=rtol, atol=rtol)
        assert torch.get_num_threads() == 2
        assert len(threads_seen) == 2 * 5 * 3 and set(threads_seen) == {1}
        bilinear = regrid_matrix(lat, lon, 2, "bilinear")
        np.testing.assert_allclose(bilinear.apply(values.astype(np.float32)),
                                   np.stack([bilinear.to_scipy() @ row for row in values]), rtol=1e-6, atol=1e-6)
        assert len(threads_seen) == 2 * 5 * 3  # no torch product for 4 weights per row
    finally:
        torch.set_num_threads(before)
    wide = scipy.sparse.csr_matrix(np.eye(3, dtype=np.float32))
    wide.indices, wide.indptr = wide.indices.astype(np.int64), wide.indptr.astype(np.int64)
    assert matrix_module._torch_csr(wide) is None  # 64-bit indices: scipy


def _apply_in_child(matrix, values: np.ndarray) -> np.ndarray:
    return matrix.apply(values)


def test_a_forked_worker_builds_and_applies_the_torch_product() -> None:
    """The cache builder forks its workers: after torch ran a two-thread parallel region in the
    parent, a worker building the torch matrix (its invariant check) and applying it must not
    enter a multi-threaded OpenMP region, which deadlocks after fork."""
    import multiprocessing

    import torch

    from datamodules.regrid.matrix import RegridMatrix

    lat, lon = centred_grid(144, 288)  # over 32 k weights: torch's checks run in parallel
    cached = regrid_matrix(lat, lon, 2, "conservative")
    fresh = RegridMatrix(cached.indptr, cached.indices, cached.weights, cached.num_sources, False)  # nothing built
    values = np.random.default_rng(6).standard_normal((2, lat.size * lon.size))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        big = torch.randn(1 << 22)
        torch.exp(big).sum()  # parallel regions in the parent: OpenMP's team exists
        cached.apply(values)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            out = pool.apply_async(_apply_in_child, (fresh, values)).get(timeout=30)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(out, np.stack([cached.to_scipy() @ row for row in values]), rtol=1e-13, atol=1e-13)
