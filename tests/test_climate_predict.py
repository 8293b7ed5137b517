"""Predict path and the icolightning-regrid tool on real netCDF files written in tmp dirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from datamodules import ClimateDataModule
from datamodules.climatenet.synthetic import generate_dataset
from datamodules.io.convert import regrid_netcdf
from datamodules.io.prediction import load_for_prediction, write_prediction
from datamodules.normalization import Normalization
from datamodules.regrid import ico_to_latlon, latlon_to_ico
from icolightning.cli.regrid import main as regrid_main
from icolightning.grid import IcoGrid

LEVEL = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data folder plus the statistics a trained model would carry in its checkpoint."""
    root = tmp_path_factory.mktemp("predict")
    generate_dataset(root, n_train=4, n_test=2, nlat=36, nlon=72, seed=2)
    dm = ClimateDataModule(root, level=LEVEL, cache_dir=root / "cache", progress=False, preprocess_workers=1)
    dm.prepare_data()
    dm.setup("test")
    return root, dm


def _reordered_copy(source, target) -> xr.Dataset:
    """Same data with descending latitude, longitudes -180..180, CF names and two time steps."""
    with xr.open_dataset(source) as ds:
        ds = ds.load()
    ds = ds.assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon").sortby("lat", ascending=False)
    ds = ds.rename({"lat": "latitude", "lon": "longitude"})
    shifted = ds.assign_coords(time=ds.time + np.timedelta64(1, "D"))
    ds = xr.concat([ds.drop_vars("LABELS"), shifted.drop_vars("LABELS")], dim="time")
    ds.to_netcdf(target)
    return ds


def test_prediction_input_matches_the_test_set_and_masks_go_back_to_the_file_grid(trained, tmp_path) -> None:
    root, dm = trained
    source = sorted((root / "test").glob("*.nc"))[0]
    state = dm.state_dict()["normalization"]
    inputs = load_for_prediction(source, state)
    assert inputs.x.shape == (1, 4, IcoGrid(LEVEL).num_vertices) and inputs.x.dtype == torch.float32
    index = next(
        i
        for i, (e, _) in enumerate(dm.test_set.samples)
        if dm.test_set.entries[e].meta["source"] == str(source)
    )
    torch.testing.assert_close(inputs.x[0], dm.test_set[index][0])

    variant = tmp_path / "variant.nc"
    ds = _reordered_copy(source, variant)
    moved = load_for_prediction(variant, Normalization.from_dict(state))
    assert moved.x.shape[0] == 2 and (moved.grid.lat_dim, moved.grid.lon_dim) == ("latitude", "longitude")
    torch.testing.assert_close(moved.x[0], inputs.x[0], atol=1e-4, rtol=1e-4)

    labels = torch.randint(0, 3, (2, IcoGrid(LEVEL).num_vertices))
    probabilities = torch.softmax(torch.randn(2, 3, IcoGrid(LEVEL).num_vertices), dim=1)
    out = write_prediction(tmp_path / "masks.nc", moved, labels, probabilities)
    with xr.open_dataset(out) as written:
        assert written["LABELS"].dims == ("time", "latitude", "longitude")
        np.testing.assert_array_equal(written.latitude.values, ds.latitude.values)
        np.testing.assert_array_equal(written.time.values, ds.time.values)
        expected = ico_to_latlon(labels.numpy(), moved.grid.lat, moved.grid.lon, method="nearest")
        np.testing.assert_array_equal(written["LABELS"].values, expected)
        back = latlon_to_ico(written["LABELS"].values, moved.grid.lat, moved.grid.lon, LEVEL, method="nearest")
        assert (back == labels.numpy()).mean() > 0.95
        probs = written["PROBABILITIES"].values
        assert probs.shape == (2, 3, 36, 72)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="labels must be"):
        write_prediction(tmp_path / "bad.nc", moved, labels[:1])


def test_regrid_tool_keeps_dims_attributes_and_labels(trained, tmp_path, capsys) -> None:
    root, _ = trained
    source = sorted((root / "train").glob("*.nc"))[0]
    target = tmp_path / "ico.nc"
    assert regrid_main([str(source), str(target), "--level", "3", "--variables", "TMQ", "PSL", "LABELS"]) == 0
    n = IcoGrid(3).num_vertices
    with xr.open_dataset(source) as src, xr.open_dataset(target) as out:
        assert out["TMQ"].dims == ("time", "vertex") and out["TMQ"].shape == (1, n)
        assert out["TMQ"].attrs["units"] == src["TMQ"].attrs["units"]
        assert out["LABELS"].dims == ("vertex",) and np.issubdtype(out["LABELS"].dtype, np.integer)
        assert out.attrs["synthetic"] == "true" and "icolightning-regrid" in out.attrs["history"]
        np.testing.assert_allclose(out["lat"].values, IcoGrid(3).latlon[:, 0])
        expected = latlon_to_ico(src["TMQ"].values, src.lat.values, src.lon.values, 3)
        np.testing.assert_allclose(out["TMQ"].values, expected, rtol=1e-6)
        assert set(out.data_vars) == {"TMQ", "PSL", "LABELS", "mesh", "mesh_face_nodes"}  # + the UGRID mesh
        np.testing.assert_array_equal(out.time.values, src.time.values)


def test_regrid_tool_keeps_integer_labels_with_a_fill_value(trained, tmp_path) -> None:
    """xarray decodes integers with a _FillValue to float; they must still be regridded as labels."""
    root, _ = trained
    with xr.open_dataset(sorted((root / "train").glob("*.nc"))[0]) as ds:
        ds = ds[["TMQ", "LABELS"]].load()
    labels = ds["LABELS"].values.astype(np.float64)
    labels[10:20, 20:40] = np.nan
    ds["LABELS"] = (("lat", "lon"), labels)
    ds["LABELS"].encoding = {"dtype": np.dtype("int16"), "_FillValue": np.int16(-1)}
    ds["TMQ"].encoding = {"dtype": np.dtype("int16"), "scale_factor": 0.01, "_FillValue": np.int16(-32768)}
    source = tmp_path / "filled.nc"
    ds.to_netcdf(source)
    regrid_netcdf(source, tmp_path / "ico.nc", 3, method="bilinear", progress=False)
    with xr.open_dataset(source) as src, xr.open_dataset(tmp_path / "ico.nc", mask_and_scale=False) as raw:
        assert raw["LABELS"].dtype == np.int16 and raw["LABELS"].attrs["_FillValue"] == -1
        assert set(np.unique(raw["LABELS"].values)) == {-1, 0, 1, 2}
        expected = latlon_to_ico(src["LABELS"].values, src.lat.values, src.lon.values, 3, "nearest")
        decoded = np.where(raw["LABELS"].values == -1, np.nan, raw["LABELS"].values)
        np.testing.assert_array_equal(decoded, expected)
        tmq = latlon_to_ico(src["TMQ"].values, src.lat.values, src.lon.values, 3, "bilinear")
        with xr.open_dataset(tmp_path / "ico.nc") as out:
            np.testing.assert_allclose(out["TMQ"].values, tmq, rtol=1e-6)


def test_regrid_tool_errors_are_clear(trained, tmp_path, capsys) -> None:
    root, _ = trained
    source = sorted((root / "train").glob("*.nc"))[0]
    assert regrid_main([str(source), str(tmp_path / "o.nc"), "--level", "2", "--variables", "NOPE"]) == 1
    err = capsys.readouterr().err
    assert str(source) in err and "'NOPE'" in err and "TMQ" in err
    assert regrid_main([str(tmp_path / "missing.nc"), str(tmp_path / "o.nc"), "--level", "2"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        regrid_main([str(source), str(tmp_path / "o.nc"), "--level", "12"])
    assert exit_info.value.code == 2
    assert "--level must be in 0.." in capsys.readouterr().err
    assert not (tmp_path / "o.nc").exists()

