"""`icolightning-predict` at scale: a zarr archive or a glob of multi-step netCDF files in (through the
archive opener that training uses, read slab by slab), netCDF or a zarr store out."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from checkpoints import write_checkpoint
from cli_runs import compose_config, run_cli

from datamodules.climatenet.synthetic_archive import generate_archive
from datamodules.io.netcdf import LatLonFile
from datamodules.io.prediction_zarr import ZarrPredictionStore
from icolightning.errors import DataFileError, UsageError
from icolightning.jobs.predict import PredictOptions, predict, prediction_fingerprint

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


@pytest.mark.parametrize("source", ["{root}/era5.zarr", "file://{root}/era5.zarr", "{root}/parts/era5_*.nc"],
                         ids=["zarr", "url", "glob"])
def test_archive_input_predicts_every_step_slab_by_slab(inputs, whole_file_prediction, source, tmp_path,
                                                        monkeypatch) -> None:
    root, _, ckpt = inputs
    source = source.format(root=root)
    reads: list[tuple[int, int]] = []
    slab = LatLonFile._slab
    monkeypatch.setattr(LatLonFile, "_slab", lambda self, name, a, b: reads.append((a, b)) or slab(self, name, a, b))
    written = run_predict(root, ckpt, source, tmp_path)
    assert list(written) == [source]  # a URL stays a URL
    assert Path(written[source]).name == "era5_prediction.nc"
    # each variable is read in slabs of at most slab_steps, never the whole archive at once
    assert sorted(set(reads)) == [(0, 6), (6, 12), (12, 18), (18, 20)] and len(reads) == 4 * 4
    with xr.open_dataset(written[source]) as out:
        assert out["LABELS"].dims == ("time", "latitude", "longitude") and out.sizes["time"] == STEPS
        xr.testing.assert_identical(out["LABELS"], whole_file_prediction["LABELS"])
        xr.testing.assert_identical(out["PROBABILITIES"], whole_file_prediction["PROBABILITIES"])
        assert out.attrs["source_file"] == source


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


@pytest.fixture(scope="module")
def zarr_prediction(inputs, tmp_path_factory) -> Path:
    """The archive predicted by one process into a zarr store, vertex outputs included."""
    root, store, ckpt = inputs
    target = tmp_path_factory.mktemp("zarr1") / "predictions.zarr"
    assert run_predict(root, ckpt, store, target, "vertex_outputs=true") == {str(store): str(target)}
    return target


def test_zarr_output_holds_what_the_netcdf_output_holds_chunked_by_region(inputs, whole_file_prediction,
                                                                          zarr_prediction) -> None:
    _, store, _ = inputs
    assert (zarr_prediction / ".complete").is_file()
    assert sorted(p.name for p in zarr_prediction.glob(".region-*")) == [f".region-{r:06d}" for r in range(4)]
    with xr.open_zarr(zarr_prediction) as out, xr.open_zarr(store) as source:
        for name in ("LABELS", "PROBABILITIES"):  # values, dims, coordinates and CF attributes
            xr.testing.assert_identical(out[name].load(), whole_file_prediction[name])
        np.testing.assert_array_equal(out["time"].values, source["time"].values)
        assert source["latitude"].attrs.items() <= out["latitude"].attrs.items()  # the input's kept, CF ones added
        assert out["LABELS"].dtype == np.int8 and out["LABELS"].encoding["chunks"] == (6, 12, 24)
        assert out["VERTEX_LABELS"].dims == ("time", "vertex") and out.sizes["vertex"] == 162
        assert {"vertex_lat", "vertex_lon"} <= set(out["VERTEX_LABELS"].coords)
        probs = out["VERTEX_PROBABILITIES"].values
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(out["VERTEX_LABELS"].values, probs.argmax(axis=1))


def test_two_gloo_ranks_write_their_own_regions_into_one_store(inputs, zarr_prediction, tmp_path) -> None:
    _, store, ckpt = inputs
    target = tmp_path / "predictions.zarr"
    done = run_cli("icolightning-predict", [f"ckpt_path={ckpt}", f"input={store}", f"output={target}",
                                            "trainer=ddp_cpu", "plots=false", "slab_steps=6", "vertex_outputs=true",
                                            f"paths.root_dir={tmp_path}", "name=ddp"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = tmp_path / "outputs" / "predict" / "ddp"
    by_rank = [[line.split(" steps ")[1].split(" -> ")[0] for line in log.read_text().splitlines() if " -> " in line]
               for log in (logs / "predict.log", logs / "train_ddp_process_1.log")]
    assert by_rank == [["0..5", "12..17"], ["6..11", "18..19"]]  # each rank wrote its regions, nothing gathered
    with xr.open_zarr(target) as two, xr.open_zarr(zarr_prediction) as one:
        xr.testing.assert_identical(two.load(), one.load())
    assert (target / ".complete").is_file()


def test_a_killed_run_reruns_only_its_unmarked_regions(inputs, zarr_prediction, tmp_path, monkeypatch) -> None:
    """A run dies in region 2 after writing part of its arrays (garbage, no marker); the rerun redoes
    regions 2 and 3 only, whole, and the store equals the uninterrupted one."""
    root, store, ckpt = inputs
    target = tmp_path / "predictions.zarr"
    write = ZarrPredictionStore.write_region
    written: list[int] = []

    def dies_in_region_2(self, region, labels, probabilities):
        if region == 2:
            zarr.open_group(self.path, mode="r+")["VERTEX_LABELS"][12:18] = 7
            raise RuntimeError("killed")
        write(self, region, labels, probabilities)

    monkeypatch.setattr(ZarrPredictionStore, "write_region", dies_in_region_2)
    with pytest.raises(RuntimeError, match="killed"):
        run_predict(root, ckpt, store, target, "vertex_outputs=true")
    assert not (target / ".complete").exists()
    assert sorted(p.name for p in target.glob(".region-*")) == [".region-000000", ".region-000001"]
    monkeypatch.setattr(ZarrPredictionStore, "write_region",
                        lambda self, region, *a: written.append(region) or write(self, region, *a))
    run_predict(root, ckpt, store, target, "vertex_outputs=true", "plots=true")
    assert written == [2, 3] and (target / ".complete").is_file()
    assert (tmp_path / "predictions.png").is_file()
    with xr.open_zarr(target) as again, xr.open_zarr(zarr_prediction) as one:
        xr.testing.assert_identical(again.load(), one.load())
    run_predict(root, ckpt, store, target, "vertex_outputs=true")  # complete: nothing left to do
    assert written == [2, 3]
    run_predict(root, ckpt, store, target)  # other options: the store is replaced, never mixed
    assert written == [2, 3, 0, 1, 2, 3]
    with xr.open_zarr(target) as replaced:
        assert "VERTEX_LABELS" not in replaced and (target / ".complete").is_file()


def test_the_output_never_replaces_a_store_that_is_not_a_prediction(inputs, tmp_path) -> None:
    root, store, ckpt = inputs
    copy = _broken_store(store, tmp_path / "era5.zarr", lambda ds: ds)
    with pytest.raises(DataFileError) as info:
        run_predict(root, ckpt, store, copy)
    assert str(info.value).startswith(f"{copy}: ") and "\n" not in str(info.value)
    with xr.open_zarr(copy) as ds:
        assert "V850" in ds


def test_a_folder_of_files_into_one_zarr_store_asks_for_a_glob(inputs, tmp_path) -> None:
    root, _, ckpt = inputs
    with pytest.raises(UsageError, match=r"takes one input.*input='.*parts/\*\.nc'"):
        run_predict(root, ckpt, root / "parts", tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_the_fingerprint_names_checkpoint_input_and_options_not_how_a_path_is_spelled(inputs, tmp_path,
                                                                                     monkeypatch) -> None:
    """A rerun resumes only what the same checkpoint, input and options wrote; `data/x.zarr` and its
    absolute path are one input, so a rerun from another spelling resumes instead of starting over."""
    root, store, ckpt = inputs
    options = PredictOptions(slab_steps=6)
    same = prediction_fingerprint(ckpt, store, options)
    monkeypatch.chdir(root)
    assert prediction_fingerprint(ckpt.name, store.name, options) == same
    assert prediction_fingerprint(ckpt, store, PredictOptions(slab_steps=6, plots=False)) == same
    other_ckpt = tmp_path / "other.ckpt"
    other_ckpt.write_bytes(ckpt.read_bytes())
    changed = [prediction_fingerprint(other_ckpt, store, options),
               prediction_fingerprint(ckpt, root / "whole.nc", options),
               prediction_fingerprint(ckpt, store, PredictOptions(slab_steps=4)),
               prediction_fingerprint(ckpt, store, PredictOptions(slab_steps=6, output_method="conservative"))]
    assert same not in changed and len(set(changed)) == len(changed)
    os.utime(other_ckpt, ns=(1, 1))  # the same path rewritten (a newer best checkpoint)
    assert prediction_fingerprint(other_ckpt, store, options) != changed[0]


def test_a_rerun_with_other_options_replaces_the_store(inputs, zarr_prediction, tmp_path) -> None:
    root, store, ckpt = inputs
    output = tmp_path / "out.zarr"
    shutil.copytree(zarr_prediction, output)
    marker = output / "region_keep_me"  # survives only if the store is resumed, not replaced
    marker.write_text("")
    run_predict(root, ckpt, store, output, "vertex_outputs=true")
    assert marker.exists()  # the same run again: kept
    run_predict(root, ckpt, store, output, "vertex_outputs=true", "output_method=conservative")
    assert not marker.exists()
    with xr.open_zarr(output) as new, xr.open_zarr(zarr_prediction) as old:
        assert new.attrs["prediction_fingerprint"] != old.attrs["prediction_fingerprint"]
        assert not np.array_equal(new["PROBABILITIES"].values, old["PROBABILITIES"].values)


def test_a_killed_runs_temporary_store_is_removed_and_no_one_elses(inputs, tmp_path) -> None:
    root, store, ckpt = inputs
    output = tmp_path / "out.zarr"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".out.zarr.{host}.{gone.stdout.strip()}-0123abcd.tmp"
    live = tmp_path / f".out.zarr.{host}.{os.getpid()}-0123abcd.tmp"
    elsewhere = tmp_path / f".out.zarr.{host}x.{gone.stdout.strip()}-0123abcd.tmp"
    for folder in (stale, live, elsewhere):
        (folder / "fields").mkdir(parents=True)
    run_predict(root, ckpt, store, output)
    assert not stale.exists() and live.exists() and elsewhere.exists()
    assert xr.open_zarr(output)["LABELS"].sizes["time"] == STEPS
