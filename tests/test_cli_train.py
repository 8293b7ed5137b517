"""The entry points end to end on a tiny synthetic set: train → eval → predict in-process (the same
functions the console scripts call), and the console script's multirun guard. DDP runs through
the console scripts are in test_distributed.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from cli_runs import compose_config as _config
from cli_runs import run_cli

from icolightning.lightning.inference import predict
from icolightning.lightning.run import evaluate, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    results = train(_config("train", root, "train", ["debug=tiny"]))
    return root, results


def test_train_leaves_checkpoints_metrics_and_figures(trained):
    root, results = trained
    run = root / "train"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
    assert Path(results["best_checkpoint"]).name.startswith("best-")
    assert (run / "prediction_map.png").stat().st_size > 10_000
    assert (run / "confusion_matrix.png").stat().st_size > 5_000
    assert (run / "csv" / "metrics.csv").is_file()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["global_step"] == results["global_step"] > 0
    for key in ("test/mAP", "test/mean_acc", "test/mean_iou", "test/acc_TC", "test/iou_AR"):
        assert 0.0 <= saved["test"][key] <= 1.0
    for name in ("TC", "AR"):  # event-level scores (icolightning.event_metrics); null when undefined
        test = saved["test"]
        assert test[f"test/true_events_{name}"] >= test[f"test/detected_{name}"] >= 0
        true, detected = test[f"test/true_events_{name}"], test[f"test/detected_{name}"]
        assert test[f"test/event_pod_{name}"] == (pytest.approx(detected / true, abs=1e-6) if true else None)
        assert f"test/event_far_{name}" in test
    assert saved["best_score"] == pytest.approx(saved["val"]["val/mAP"], abs=1.0)  # present, a number
    assert (root / "data" / "synthetic_climatenet" / "train").is_dir()  # generated on first use


def test_eval_reproduces_the_test_metrics_of_the_best_checkpoint(trained, capsys):
    root, results = trained
    tiny_data = ["data.level=2", "data.batch_size=2", "data.preprocess_workers=1", "synthetic.n_train=12",
                 "synthetic.n_test=4", "synthetic.nlat=24", "synthetic.nlon=48"]  # as in debug=tiny
    cfg = _config("eval", root, "eval", [f"ckpt_path={results['best_checkpoint']}", *tiny_data,
                                         "trainer.enable_progress_bar=false"])
    evaluated = evaluate(cfg)
    for key, value in results["test"].items():
        assert evaluated["test"][key] == pytest.approx(value, abs=1e-6), key
    out = root / "eval"
    assert json.loads((out / "metrics.json").read_text())["test"] == evaluated["test"]
    assert (out / "confusion_matrix.png").stat().st_size > 5_000
    assert (out / "prediction_map.png").stat().st_size > 10_000
    assert "test/mAP" in capsys.readouterr().out


def test_predict_writes_masks_on_the_input_grid(trained, tmp_path):
    root, results = trained
    source = sorted((root / "data" / "synthetic_climatenet" / "test").glob("*.nc"))[0]
    flipped = tmp_path / "flipped.nc"  # descending latitude, longitudes -180..180
    with xr.open_dataset(source) as ds:
        ds = ds.isel(lat=slice(None, None, -1)).assign_coords(lon=((ds.lon + 180) % 360) - 180).sortby("lon")
        ds.to_netcdf(flipped)
    cfg = _config("predict", root, "predict", [f"ckpt_path={results['best_checkpoint']}",
                                                 f"input={flipped}", f"output={tmp_path / 'out'}"])
    written = predict(cfg)
    with xr.open_dataset(written[str(flipped)]) as out, xr.open_dataset(flipped) as inp:
        assert out.LABELS.shape == (1, inp.sizes["lat"], inp.sizes["lon"])
        np.testing.assert_array_equal(out.lat, inp.lat)
        np.testing.assert_array_equal(out.lon, inp.lon)
        probs = out.PROBABILITIES.values
        assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
        agreement = (out.LABELS.values[0] == inp.LABELS.values).mean()
    assert agreement > 0.5  # a trained model on the input's own grid, not noise or a flipped map
    assert (tmp_path / "out" / "flipped_prediction.png").is_file()


def test_multirun_with_ddp_is_refused_by_the_cli(tmp_path):
    args = ["-m", "debug=tiny", "trainer=ddp_cpu", "seed=1,2", f"paths.root_dir={tmp_path}"]
    done = run_cli("icolightning-train", args, tmp_path)
    assert done.returncode != 0
    assert "multirun" in (done.stdout + done.stderr)
    assert not (tmp_path / "data").exists()  # refused before doing any work
