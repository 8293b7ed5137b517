"""Bad input gets a clear error naming the file (and variable), and nothing is lost."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from datamodules import ClimateDataModule
from datamodules.climatenet.datamodule import CLIMATENET4, EmptySplitError
from datamodules.climatenet.synthetic import file_name, grid_coords, make_sample
from datamodules.io.convert import regrid_netcdf
from datamodules.io.netcdf import LatLonFile
from datamodules.io.prediction import load_for_prediction
from datamodules.normalization import Normalization
from icolightning.errors import DataFileError
from icolightning.grid import IcoGrid

LEVEL = 2


def write_file(
    path: Path,
    day: int = 0,
    nlat: int = 24,
    nlon: int = 48,
    drop: tuple[str, ...] = (),
    labels: np.ndarray | None = None,
    edit=None,
) -> Path:
    """A ClimateNet-style file written through xarray, optionally broken by `edit(dataset)`."""
    date = dt.date(2000, 1, 1) + dt.timedelta(days=day)
    fields, generated, _, _ = make_sample(date, nlat, nlon, np.random.default_rng(day))
    lat, lon = grid_coords(nlat, nlon)
    ds = xr.Dataset(
        {name: (("time", "lat", "lon"), value[None]) for name, value in fields.items() if name not in drop},
        coords={"time": [np.datetime64(date, "ns")], "lat": lat, "lon": lon},
    )
    ds["LABELS"] = (("lat", "lon"), generated if labels is None else labels)
    ds = edit(ds) if edit else ds
    target = path if path.suffix == ".nc" else path / file_name(date)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(target)
    return target


def layout(root: Path, n_train: int = 3, n_test: int = 1, **kwargs) -> Path:
    for i in range(n_train):
        write_file(root / "train", day=i, **kwargs)
    for i in range(n_test):
        write_file(root / "test", day=400 + i, **kwargs)
    return root


def make_dm(root: Path, **kwargs) -> ClimateDataModule:
    options = {"level": LEVEL, "cache_dir": root / "cache", "progress": False, "preprocess_workers": 1}
    return ClimateDataModule(root, **{**options, **kwargs})


def test_missing_variable_names_file_variable_and_what_the_file_has(tmp_path) -> None:
    root = layout(tmp_path)
    bad = write_file(root / "train", day=50, drop=("PSL",))
    with pytest.raises(DataFileError) as info:
        make_dm(root).prepare_data()
    message = str(info.value)
    assert str(bad) in message and "'PSL'" in message and "TMQ" in message and "LABELS" in message


def test_labels_outside_the_three_classes(tmp_path) -> None:
    root = layout(tmp_path)
    labels = np.zeros((24, 48), dtype=np.int64)
    labels[3, 4] = 3
    labels[5, 6] = -1
    bad = write_file(root / "train", day=60, labels=labels)
    with pytest.raises(DataFileError, match=r"variable 'LABELS'.*found \[-1, 3\]") as info:
        make_dm(root).prepare_data()
    assert str(bad) in str(info.value)


def test_missing_labels_are_refused(tmp_path) -> None:
    root = layout(tmp_path)
    labels = np.zeros((24, 48))
    labels[0, 0] = np.nan
    write_file(root / "train", day=61, labels=labels)
    with pytest.raises(DataFileError, match=r"missing .* labels"):
        make_dm(root).prepare_data()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_file(tmp_path, damage) -> None:
    root = layout(tmp_path)
    bad = root / "train" / "data-2001-01-01-01-1_0.nc"
    if damage == "garbage":
        bad.write_bytes(b"this is not netCDF" * 100)
    else:
        good = sorted((root / "train").glob("*.nc"))[0].read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataFileError) as info:
        make_dm(root).prepare_data()
    assert str(bad) in str(info.value)


def test_errors_from_the_process_pool_keep_the_file_name_and_finished_entries(tmp_path) -> None:
    root = layout(tmp_path, n_train=4)
    bad = write_file(root / "train", day=70, drop=("TMQ",))
    dm = make_dm(root, preprocess_workers=2)
    with pytest.raises(DataFileError, match="'TMQ'") as info:
        dm.prepare_data()
    assert info.value.path == bad
    bad.unlink()
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 4


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_or_missing_split_folder(tmp_path, split) -> None:
    root = layout(tmp_path)
    shutil.rmtree(root / split)
    (root / split).mkdir()
    with pytest.raises(EmptySplitError, match=f"{root / split}.*no netCDF"):
        dm = make_dm(root)
        dm.prepare_data()
        dm.setup("test")
    shutil.rmtree(root / split)
    with pytest.raises(EmptySplitError, match="does not exist"):
        dm = make_dm(root)
        dm.prepare_data()
        dm.setup("test")


def _cf_variant(ds: xr.Dataset) -> xr.Dataset:
    """Descending latitude, longitudes -180..180, CF names latitude/longitude."""
    ds = ds.assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon").sortby("lat", ascending=False)
    ds = ds.rename({"lat": "latitude", "lon": "longitude"})
    ds["latitude"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    ds["longitude"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    return ds


def test_files_on_different_grids_are_each_regridded(tmp_path) -> None:
    root = layout(tmp_path, n_train=2)
    write_file(root / "train", day=10, nlat=48, nlon=96)
    write_file(root / "train", day=11, edit=_cf_variant)
    dm = make_dm(root, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    n = IcoGrid(LEVEL).num_vertices
    items = [dm.train_set[i] for i in range(len(dm.train_set))]
    assert len(items) == 4 and all(x.shape == (4, n) and torch.isfinite(x).all() for x, _ in items)
    plain = make_dm(tmp_path / "plain", val_fraction=0.0)
    write_file(tmp_path / "plain" / "train", day=11)
    plain.setup("fit")
    x_plain = plain.train_set[0][0]
    x_variant = dm.train_set[3][0]
    raw = np.asarray(dm.normalization.std, dtype=np.float32)[:, None]
    back = (
        x_plain.numpy() * np.asarray(plain.normalization.std, np.float32)[:, None]
        + np.asarray(plain.normalization.mean, np.float32)[:, None]
    )
    back_variant = x_variant.numpy() * raw + np.asarray(dm.normalization.mean, np.float32)[:, None]
    np.testing.assert_allclose(back_variant, back, rtol=1e-4)


def test_regional_training_grid_is_refused(tmp_path) -> None:
    root = layout(tmp_path)
    bad = write_file(root / "train", day=80, edit=lambda ds: ds.isel(lat=slice(4, 20)))
    with pytest.raises(DataFileError, match="does not cover the sphere") as info:
        make_dm(root).prepare_data()
    assert str(bad) in str(info.value)


def _with_fill_values(ds: xr.Dataset) -> xr.Dataset:
    tmq = ds["TMQ"].values.copy()
    tmq[0, 8:16, 10:30] = np.nan
    ds["TMQ"] = (("time", "lat", "lon"), tmq)
    ds["TMQ"].encoding["_FillValue"] = -9999.0
    return ds


def test_fill_values_are_filled_with_a_warning_and_never_reach_a_batch(tmp_path) -> None:
    root = layout(tmp_path)
    bad = write_file(root / "train", day=90, edit=_with_fill_values)
    with xr.open_dataset(bad, mask_and_scale=False) as raw:
        assert (raw["TMQ"].values == -9999.0).sum() == 8 * 20
    dm = make_dm(root, val_fraction=0.0)
    with pytest.warns(RuntimeWarning, match=rf"{bad}: variable 'TMQ' has 160 missing"):
        dm.prepare_data()
    dm.setup("fit")
    batches = [x for x, _ in dm.train_dataloader()]
    assert all(torch.isfinite(x).all() for x in batches)
    strict = make_dm(root, nan_policy="raise", cache_dir=tmp_path / "strict")
    with pytest.raises(DataFileError, match=r"variable 'TMQ'.*160 missing") as info:
        strict.prepare_data()
    assert str(bad) in str(info.value)


def test_vertices_without_any_valid_source_get_the_training_mean(tmp_path) -> None:
    root = layout(tmp_path)

    def big_hole(ds: xr.Dataset) -> xr.Dataset:
        tmq = ds["TMQ"].values.copy()
        tmq[0, 6:18, 5:40] = np.nan
        ds["TMQ"] = (("time", "lat", "lon"), tmq)
        return ds

    bad = write_file(root / "train", day=95, edit=big_hole)
    dm = make_dm(root, val_fraction=0.0)
    with pytest.warns(RuntimeWarning, match=r"vertices left without any valid neighbour"):
        dm.prepare_data()
    dm.setup("fit")
    index = next(
        i
        for i, (e, _) in enumerate(dm.train_set.samples)
        if dm.train_set.entries[e].meta["source"] == str(bad)
    )
    raw = dm.train_set.entries[dm.train_set.samples[index][0]].fields()[0, 0]
    x = dm.train_set[index][0]
    assert np.isnan(raw).sum() > 3
    assert (x[0][torch.from_numpy(np.isnan(raw))] == 0).all()


def _one_inf(ds: xr.Dataset) -> xr.Dataset:
    tmq = ds["TMQ"].values.copy()
    tmq[0, 5, 7] = np.inf
    ds["TMQ"] = (("time", "lat", "lon"), tmq)
    return ds


def test_infinite_values_are_missing_values_not_an_infinite_mean(tmp_path) -> None:
    root = layout(tmp_path)
    bad = write_file(root / "train", day=90, edit=_one_inf)
    dm = make_dm(root, val_fraction=0.0)
    with pytest.warns(RuntimeWarning, match=rf"{bad}: variable 'TMQ' has 1 missing or non-finite"):
        dm.prepare_data()
    dm.setup("fit")
    assert np.isfinite(dm.normalization.mean).all() and np.isfinite(dm.normalization.std).all()
    tmq = torch.stack([dm.train_set[i][0][0] for i in range(len(dm.train_set))])
    assert torch.isfinite(tmq).all() and tmq.std() == pytest.approx(1.0, abs=1e-3)
    strict = make_dm(root, nan_policy="raise", cache_dir=tmp_path / "strict")
    with pytest.raises(DataFileError, match=r"variable 'TMQ'.*1 missing or non-finite") as info:
        strict.prepare_data()
    assert str(bad) in str(info.value)


def test_statistics_that_are_not_finite_name_the_variable() -> None:
    ones = np.ones((2, 2))
    mean = np.array([[1.0, np.inf], [2.0, 3.0]])
    with pytest.raises(ValueError, match=r"statistics of \['PSL'\] are not finite"):
        Normalization.from_partials(("TMQ", "PSL"), ones, mean, ones, np.ones((2, 3)), LEVEL, "bilinear")


def _repeated_latitude(ds: xr.Dataset) -> xr.Dataset:
    lat = ds["lat"].values.copy()
    lat[5] = lat[4]
    return ds.assign_coords(lat=lat)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_repeated_latitude, "strictly monotonic"),
        (lambda ds: ds.assign_coords(lat=ds["lat"] * 1.2), r"\[-90, 90\]"),
        (lambda ds: ds.isel(lat=slice(3, 4)), "at least 2 latitudes"),
    ],
    ids=["repeated", "beyond-pole", "one-row"],
)
def test_grids_that_cannot_be_regridded_name_the_file(tmp_path, edit, message) -> None:
    root = layout(tmp_path, n_train=1, n_test=0)
    bad = write_file(root / "train", day=30, edit=edit)
    with pytest.raises(DataFileError, match=rf"{bad}: variable 'TMQ': cannot be regridded: .*{message}"):
        make_dm(root, val_fraction=0.0).prepare_data()
    norm = Normalization(CLIMATENET4, (0.0,) * 4, (1.0,) * 4, (1.0, 0.0, 0.0), 1, LEVEL, "bilinear")
    with pytest.raises(DataFileError, match=message) as info:
        load_for_prediction(bad, norm)
    assert info.value.path == bad


def _rotated_pole(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.rename({"lat": "rlat", "lon": "rlon"})
    ds["rlat"].attrs = {"standard_name": "grid_latitude", "units": "degrees", "axis": "Y"}
    ds["rlon"].attrs = {"standard_name": "grid_longitude", "units": "degrees", "axis": "X"}
    return ds


def _projected(standard_names: bool):
    def edit(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.rename({"lat": "y", "lon": "x"})
        for dim, axis in (("y", "Y"), ("x", "X")):
            ds[dim].attrs = {"axis": axis, "units": "km"}
            if standard_names:
                ds[dim].attrs["standard_name"] = f"projection_{dim}_coordinate"
        return ds

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_rotated_pole, "standard_name 'grid_latitude': a rotated-pole grid"),
        (_projected(True), "standard_name 'projection_y_coordinate': a projected grid"),
        (_projected(False), "axis 'Y' but units 'km', not degrees: a projected grid"),
    ],
    ids=["rotated-pole", "projected", "projected-axis-only"],
)
def test_rotated_pole_and_projected_grids_are_refused(tmp_path, edit, message) -> None:
    bad = write_file(tmp_path / "bad.nc", edit=edit)
    with pytest.raises(DataFileError, match=message) as info:
        LatLonFile(bad, CLIMATENET4, "LABELS")
    assert info.value.path == bad and "latitude-longitude" in str(info.value)
    with pytest.raises(DataFileError, match=message):
        regrid_netcdf(bad, tmp_path / "out.nc", LEVEL, progress=False)


def test_an_x_y_axis_in_degrees_is_still_a_latitude_longitude_grid(tmp_path) -> None:
    def axes_only(ds: xr.Dataset) -> xr.Dataset:
        ds = ds.rename({"lat": "y", "lon": "x"})
        ds["y"].attrs, ds["x"].attrs = {"axis": "Y", "units": "degrees_north"}, {"axis": "X", "units": "degree"}
        return ds

    with LatLonFile(write_file(tmp_path / "ok.nc", edit=axes_only), CLIMATENET4) as data:
        assert (data.lat_dim, data.lon_dim) == ("y", "x")
