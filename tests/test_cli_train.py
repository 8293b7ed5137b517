"""The entry points end to end: train → eval in-process on a tiny synthetic set (the same functions
the console scripts call), the console scripts for predict with an oracle network and the
multirun guard. DDP runs through the console scripts are in test_distributed.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from checkpoints import write_checkpoint
from cli_runs import compose_config as _config
from cli_runs import run_cli

from icolightning.jobs.evaluate import evaluate
from icolightning.jobs.train import train


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
    assert saved["host_memory_reuse"] is True  # conf/train.yaml turns glibc's memory reuse on (Linux, glibc)
    for key in ("test/mAP", "test/mean_acc", "test/mean_iou", "test/acc_TC", "test/iou_AR"):
        assert 0.0 <= saved["test"][key] <= 1.0
    test = saved["test"]  # the means are the means of the per-class values (every class is in the test split)
    assert saved["absent_classes"] == {"val": [], "test": []}
    assert test["test/mean_acc"] == pytest.approx(np.mean([test[f"test/acc_{c}"] for c in ("BG", "TC", "AR")]))
    assert test["test/mAP"] == pytest.approx((test["test/ap_TC"] + test["test/ap_AR"]) / 2)
    assert test["test/mean_iou"] == pytest.approx(np.mean([test[f"test/iou_{c}"] for c in ("BG", "TC", "AR")]))
    with open(run / "csv" / "metrics.csv") as f:
        per_epoch = [float(r["val/mAP"]) for r in csv.DictReader(f) if r.get("val/mAP")]
    assert len(per_epoch) == 2 and saved["best_score"] == pytest.approx(max(per_epoch), abs=1e-6)
    assert Path(results["best_checkpoint"]).name.startswith(f"best-epoch{per_epoch.index(max(per_epoch)):03d}")
    for name in ("TC", "AR"):  # event-level scores (icolightning.metrics.events); null when undefined
        assert test[f"test/true_events_{name}"] >= test[f"test/detected_{name}"] >= 0
        true, detected = test[f"test/true_events_{name}"], test[f"test/detected_{name}"]
        assert test[f"test/event_pod_{name}"] == (pytest.approx(detected / true, abs=1e-6) if true else None)
        assert f"test/event_far_{name}" in test
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


def _oracle_answer(lat: np.ndarray, lon: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """What tests/oracle_net.py must predict on _oracle_input's step, and the cells far enough from a class
    boundary (3 degrees; meridians converge south of 80 S) for nearest-vertex labels to be exact."""
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    tmq, u850 = lat2 + 10.0 * step, np.cos(np.deg2rad(lon2 - 100.0))
    answer = np.where(tmq > 30.0, 1, np.where(u850 > 0.5, 2, 0))
    off_meridian = np.minimum(np.abs((lon2 - 40 + 180) % 360 - 180), np.abs((lon2 - 160 + 180) % 360 - 180))
    clear = (np.abs(tmq - 30.0) > 3) & ((tmq > 30.0) | ((off_meridian > 3) & (lat2 > -80)))
    return answer, clear


def _oracle_input(path: Path, steps: int) -> xr.Dataset:
    """Descending latitudes, longitudes -180..180; TMQ = latitude + 10 * step, U850 = cos(lon - 100)."""
    lat, lon = np.arange(89.0, -90.0, -2.0), np.arange(-180.0, 180.0, 2.0)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    tmq = np.stack([lat2 + 10.0 * t for t in range(steps)]).astype(np.float32)
    u850 = np.broadcast_to(np.cos(np.deg2rad(lon2 - 100.0)), tmq.shape).astype(np.float32)
    zeros = np.zeros_like(tmq)
    dims = ("time", "lat", "lon")
    ds = xr.Dataset({"TMQ": (dims, tmq), "U850": (dims, u850), "V850": (dims, zeros), "PSL": (dims, zeros)},
                    coords={"time": np.arange(steps), "lat": lat, "lon": lon})
    ds.to_netcdf(path)
    return ds


def test_predict_gives_the_oracle_answer_on_the_input_grid(tmp_path):
    """The real icolightning-predict with a network whose output is a known function of its input, on a
    file with flipped latitudes and -180..180 longitudes, streamed in slabs of 2 of its 3 steps."""
    ckpt = write_checkpoint(tmp_path / "oracle.ckpt", net={"_target_": "oracle_net.OracleNet"}, level=5)
    ds = _oracle_input(tmp_path / "flipped.nc", steps=3)
    done = run_cli("icolightning-predict", [f"ckpt_path={ckpt}", f"input={tmp_path / 'flipped.nc'}",
                                            f"output={tmp_path / 'out'}", "slab_steps=2", f"paths.root_dir={tmp_path}"],
                   tmp_path, extra_env={"ICOLIGHTNING_TRUSTED_MODULES": "oracle_net"})
    assert done.returncode == 0, done.stderr[-3000:]
    with xr.open_dataset(tmp_path / "out" / "flipped_prediction.nc") as out:
        np.testing.assert_array_equal(out.lat, ds.lat)
        np.testing.assert_array_equal(out.lon, ds.lon)
        assert out.LABELS.dims == ("time", "lat", "lon") and out.LABELS.shape == (3, 90, 180)
        np.testing.assert_allclose(out.PROBABILITIES.values.sum(1), 1.0, atol=1e-4)
        for step in range(3):
            answer, clear = _oracle_answer(ds.lat.values, ds.lon.values, step)
            assert clear.mean() > 0.8
            agreement = (out.LABELS.values[step] == answer)[clear].mean()
            assert agreement >= 0.99, (step, agreement)
    assert (tmp_path / "out" / "flipped_prediction.png").is_file()


def test_multirun_with_ddp_is_refused_by_the_cli(tmp_path):
    args = ["-m", "debug=tiny", "trainer=ddp_cpu", "seed=1,2", f"paths.root_dir={tmp_path}"]
    done = run_cli("icolightning-train", args, tmp_path)
    assert done.returncode != 0
    assert "multirun" in (done.stdout + done.stderr)
    assert not (tmp_path / "data").exists()  # refused before doing any work
