"""Synthetic ClimateNet-layout data: exact layout, determinism, and physically sensible events."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pytest
import xarray as xr

from datamodules.climatenet.synthetic import VARIABLES, generate_dataset, grid_coords, make_sample
from icolightning.cli.make_synthetic import main as make_synthetic_main

NAME = re.compile(r"^data-(\d{4}-\d{2}-\d{2})-01-1_0\.nc$")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, n_train=6, n_test=3, nlat=96, nlon=144, seed=11)
    return root


def test_layout_matches_climatenet(synthetic) -> None:
    train, test = sorted((synthetic / "train").iterdir()), sorted((synthetic / "test").iterdir())
    assert len(train) == 6 and len(test) == 3
    assert all(NAME.match(p.name) for p in train + test)
    assert max(NAME.match(p.name)[1] for p in train) < min(NAME.match(p.name)[1] for p in test)
    with xr.open_dataset(train[0]) as ds:
        assert dict(ds.sizes) == {"time": 1, "lat": 96, "lon": 144}
        assert list(ds.data_vars) == [*VARIABLES, "LABELS"]
        for name, (units, long_name) in VARIABLES.items():
            assert ds[name].dims == ("time", "lat", "lon") and ds[name].dtype == np.float32
            assert ds[name].attrs["units"] == units and ds[name].attrs["long_name"] == long_name
            assert np.isfinite(ds[name].values).all()
        assert ds["LABELS"].dims == ("lat", "lon")
        assert set(np.unique(ds["LABELS"].values)) <= {0, 1, 2}
        assert ds.lat.values[0] == -90.0 and ds.lat.values[-1] == 90.0 and ds.lon.values[0] == 0.0
        assert ds.attrs["synthetic"] == "true"
        assert "synthetic" in ds.attrs["title"].lower() and "synthetic" in ds.attrs["source"].lower()
        assert str(ds.time.values[0])[:10] == NAME.match(train[0].name)[1]


def test_full_size_grid_coordinates() -> None:
    lat, lon = grid_coords(768, 1152)
    assert (lat[0], lat[-1], lon[0], lon[-1]) == (-90.0, 90.0, 0.0, 359.6875)


def test_deterministic_by_seed(tmp_path) -> None:
    def first_file(seed: int, folder: str) -> dict[str, np.ndarray]:
        paths = generate_dataset(tmp_path / folder, n_train=1, n_test=0, nlat=32, nlon=64, seed=seed)
        with xr.open_dataset(paths[0]) as ds:
            return {k: ds[k].values for k in ds.data_vars}

    a, b, c = first_file(5, "a"), first_file(5, "b"), first_file(6, "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["TMQ"], c["TMQ"])


def _events(seed: int, nlat: int = 180, nlon: int = 360):
    rng = np.random.default_rng(seed)
    return make_sample(dt.date(2001, 8, 1), nlat, nlon, rng), grid_coords(nlat, nlon)


def test_cyclones_are_warm_core_lows_spinning_cyclonically() -> None:
    checked = 0
    for seed in range(6):
        (fields, labels, cyclones, _), (lat, lon) = _events(seed)
        for tc in cyclones:
            if tc.intensity < 0.5:
                continue
            i, j = np.argmin(np.abs(lat - tc.lat)), np.argmin(np.abs(lon - tc.lon))
            near = (slice(i - 8, i + 9), np.arange(j - 8, j + 9) % lon.size)
            psl = fields["PSL"][near[0]][:, near[1]]
            assert psl[8, 8] < np.delete(psl, 8 * 17 + 8).mean() - 1000
            assert fields["T500"][i, j] - np.median(fields["T500"][i]) > 2.0 * tc.intensity
            assert fields["TMQ"][i, j] > np.median(fields["TMQ"][i])
            assert labels[i, j] == 1
            # relative vorticity dv/dx - du/dy from centred differences around the centre (per degree)
            u, v = fields["U850"], fields["V850"]
            d = 2
            vorticity = (v[i, (j + d) % lon.size] - v[i, j - d]) - (u[i + d, j] - u[i - d, j])
            assert np.sign(vorticity) == np.sign(tc.lat)
            checked += 1
    assert checked >= 4


def test_rivers_are_long_moist_filaments_from_the_tropics_poleward() -> None:
    checked = 0
    for seed in range(6):
        (fields, labels, _, rivers), (lat, _) = _events(seed)
        river_rows = np.flatnonzero((labels == 2).any(axis=1))
        if not any(r.labelled for r in rivers):
            continue
        assert np.ptp(lat[river_rows]) > 15
        zonal_mean = fields["TMQ"].mean(axis=1, keepdims=True)
        assert (fields["TMQ"] - zonal_mean)[labels == 2].mean() > 3.0
        for ar in rivers:
            assert abs(ar.lat0) < 25 and abs(ar.lat1) > 40 and np.sign(ar.lat0) == np.sign(ar.lat1)
        checked += 1
    assert checked >= 3


def test_weak_events_are_drawn_but_unlabelled(synthetic) -> None:
    events = []
    for path in sorted((synthetic / "train").iterdir()):
        with xr.open_dataset(path) as ds:
            meta = json.loads(ds.attrs["synthetic_events"])
        events += meta["cyclones"] + meta["rivers"]
    assert any(e["labelled"] for e in events) and any(not e["labelled"] for e in events)


def test_cli_writes_train_and_test_folders_and_refuses_tiny_grids(tmp_path) -> None:
    args = ["--train", "3", "--test", "2", "--nlat", "24", "--nlon", "48", "--quiet"]
    assert make_synthetic_main([str(tmp_path), *args]) == 0
    assert len(list((tmp_path / "train").glob("*.nc"))) == 3 and len(list((tmp_path / "test").glob("*.nc"))) == 2
    with pytest.raises(SystemExit) as exit_info:  # a bad option value: exit status 2, as any bad argument
        make_synthetic_main([str(tmp_path / "x"), "--nlat", "4", "--quiet"])
    assert exit_info.value.code == 2 and not (tmp_path / "x").exists()


def test_cli_refuses_negative_counts_like_any_bad_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic_main([str(tmp_path), "--train", "-1"])
    assert exit_info.value.code == 2
    assert "--train and --test must be >= 0" in capsys.readouterr().err
