"""A zarr archive through the whole project, in-process: `icolightning-regrid` into the vertex store,
a short fit on the archive split by time periods (its cache is the same vertex store), evaluation of
the best checkpoint, and prediction from the archive into a zarr store read back with xarray."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from cli_runs import compose_config

from datamodules.climatenet.synthetic_archive import generate_archive
from icolightning.classes import CLASS_NAMES
from icolightning.cli.regrid import main as regrid
from icolightning.jobs.evaluate import evaluate
from icolightning.jobs.predict import predict
from icolightning.jobs.train import train

STEPS = 80  # 20 days, six-hourly from 1979-01-01
VARIABLES = ("TMQ", "U850", "V850", "PSL")
PERIODS = {"train": ("1979-01-01", "1979-01-12"), "val": ("1979-01-13", "1979-01-15"),
           "test": ("1979-01-16", "1979-01-20")}
STEPS_PER_SPLIT = {"train": 48, "val": 12, "test": 20}


def _data(store) -> list[str]:
    splits = [f"data.splits.{name}=[{a},{b}]" for name, (a, b) in PERIODS.items()]
    return ["data=era5_zarr", f"data.data_dir={store}", "data.level=2", "data.batch_size=4", "data.num_workers=0",
            "+dask=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *splits]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every stage once; the tests below check what each left behind."""
    root = tmp_path_factory.mktemp("archive_e2e")
    store = generate_archive(root / "era5.zarr", steps=STEPS, nlat=12, nlon=24)
    assert regrid([str(store), str(root / "vertex.zarr"), "--level", "2", "--variables", *VARIABLES,
                   "--label-variable", "LABELS", "--scheduler", "none", "--quiet"]) == 0
    trained = train(compose_config("train", root, "train", [
        *_data(store), "model.net.widths=[4,8]", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1", "plots=false"]))
    evaluated = evaluate(compose_config("eval", root, "eval", [
        *_data(store), f"ckpt_path={trained['best_checkpoint']}", "num_map_samples=1"]))
    predicted = predict(compose_config("predict", root, "predict", [
        f"ckpt_path={trained['best_checkpoint']}", f"input={store}", f"output={root / 'predictions.zarr'}",
        "slab_steps=32", "plots=false"]))
    return root, store, trained, evaluated, predicted


def test_training_cache_is_the_regrid_tools_vertex_store_split_by_period(pipeline) -> None:
    root, _, trained, _, _ = pipeline
    whole = xr.open_zarr(root / "vertex.zarr")
    assert whole["fields"].shape == (STEPS, len(VARIABLES), 162)
    times = list(whole.attrs["times"])
    entries = sorted((root / "data" / "cache").rglob("era5-*.zarr"))
    found = {}
    for path in entries:
        with xr.open_zarr(path) as entry:
            first = times.index(entry.attrs["times"][0])
            part = slice(first, first + entry.sizes["time"])
            np.testing.assert_array_equal(entry["fields"].values, whole["fields"].values[part])
            np.testing.assert_array_equal(entry["labels"].values, whole["labels"].values[part])
            found[entry.attrs["times"][0][:10]] = entry.sizes["time"]
    assert found == {PERIODS[s][0]: n for s, n in STEPS_PER_SPLIT.items()}
    assert trained["global_step"] == 4


def test_evaluation_reproduces_the_training_test_metrics(pipeline) -> None:
    _, _, trained, evaluated, _ = pipeline
    assert trained["test"] and set(evaluated["test"]) == set(trained["test"])
    for key, value in trained["test"].items():
        assert evaluated["test"][key] == pytest.approx(value, abs=1e-6), key


def test_predictions_of_the_archive_open_in_xarray(pipeline) -> None:
    root, store, _, _, predicted = pipeline
    target = root / "predictions.zarr"
    assert predicted == {str(store): str(target)} and (target / ".complete").is_file()
    with xr.open_zarr(target) as out, xr.open_zarr(store) as source:
        labels = out["LABELS"]
        assert labels.dims == ("time", "latitude", "longitude") and labels.shape == (STEPS, 12, 24)
        np.testing.assert_array_equal(out["time"].values, source["time"].values)
        assert set(np.unique(labels.values)) <= set(range(len(CLASS_NAMES)))
        assert labels.attrs["flag_meanings"] == " ".join(CLASS_NAMES)
        np.testing.assert_allclose(out["PROBABILITIES"].sum("class").values, 1.0, atol=1e-5)
