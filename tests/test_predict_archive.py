"""`icolightning-predict` at scale: a zarr archive or a glob of multi-step netCDF files in (through the
archive opener that training uses, read slab by slab), netCDF or a zarr store out."""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr
from checkpoints import write_checkpoint
from cli_runs import compose_config

from datamodules.climatenet.synthetic_archive import generate_archive
from datamodules.io.netcdf import LatLonFile
from icolightning.errors import DataFileError
from icolightning.jobs.predict import predict

STEPS = 20


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One archive three ways: a zarr store (8-step chunks), two multi-step netCDF files, one whole file."""
    root = tmp_path_factory.mktemp("predict_archive")
    store = generate_archive(root / "era5.zarr", steps=STEPS, nlat=12, nlon=24)
    with xr.open_zarr(store) as ds:
        ds = ds.load()
    (root / "parts").mkdir()
    for i, start in enumerate((0, 13)):  # unequal files: 13 and 7 steps
        ds.isel(time=slice(start, start + 13)).to_netcdf(root / "parts" / f"era5_{i}.nc")
    ds.to_netcdf(root / "whole.nc")
    return root, store, write_checkpoint(root / "model.ckpt")


def run_predict(root: Path, ckpt: Path, source: str | Path, output: Path, *overrides: str) -> dict[str, str]:
    cfg = compose_config("predict", root, "run", [f"ckpt_path={ckpt}", f"input={source}", f"output={output}",
                                                  "plots=false", "slab_steps=6", *overrides])
    return predict(cfg)


@pytest.fixture(scope="module")
def whole_file_prediction(inputs, tmp_path_factory):
    """The reference: the archive as one multi-step netCDF file, the path prediction always had."""
    root, _, ckpt = inputs
    (target,) = run_predict(root, ckpt, root / "whole.nc", tmp_path_factory.mktemp("whole")).values()
    with xr.open_dataset(target) as ds:
        return ds.load()


@pytest.mark.parametrize("source", ["era5.zarr", "parts/era5_*.nc"], ids=["zarr", "glob"])
def test_archive_input_predicts_every_step_slab_by_slab(inputs, whole_file_prediction, source, tmp_path,
                                                        monkeypatch) -> None:
    root, _, ckpt = inputs
    reads: list[tuple[int, int]] = []
    slab = LatLonFile._slab
    monkeypatch.setattr(LatLonFile, "_slab", lambda self, name, a, b: reads.append((a, b)) or slab(self, name, a, b))
    written = run_predict(root, ckpt, root / source, tmp_path)
    assert list(written) == [str(root / source)]
    assert Path(written[str(root / source)]).name == "era5_prediction.nc"
    # each variable is read in slabs of at most slab_steps, never the whole archive at once
    assert sorted(set(reads)) == [(0, 6), (6, 12), (12, 18), (18, 20)] and len(reads) == 4 * 4
    with xr.open_dataset(written[str(root / source)]) as out:
        assert out["LABELS"].dims == ("time", "latitude", "longitude") and out.sizes["time"] == STEPS
        xr.testing.assert_identical(out["LABELS"], whole_file_prediction["LABELS"])
        xr.testing.assert_identical(out["PROBABILITIES"], whole_file_prediction["PROBABILITIES"])
        assert out.attrs["source_file"] == str(root / source)


def _broken_store(store: Path, target: Path, change) -> Path:
    with xr.open_zarr(store) as ds:
        change(ds.load()).to_zarr(target, mode="w")
    return target


@pytest.mark.parametrize(("change", "problem"), [
    (lambda ds: ds.drop_vars("V850"), "not in the file; it has the variables"),
    (lambda ds: ds.assign(V850=(("time", "y", "x"), ds["V850"].values)), "missing the grid dimension 'latitude'"),
], ids=["missing_variable", "wrong_grid"])
def test_bad_archive_is_one_line_naming_the_store_and_variable(inputs, change, problem, tmp_path) -> None:
    root, store, ckpt = inputs
    store = _broken_store(store, tmp_path / "broken.zarr", change)
    with pytest.raises(DataFileError) as info:
        run_predict(root, ckpt, store, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{store}: variable 'V850': ") and problem in message
