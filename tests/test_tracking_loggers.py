"""logger=mlflow (local file store) and logger=wandb (offline) end to end, with no network: a short
fit, then a fit resumed with ckpt_path=last that appends to the same run; hyper-parameters, metrics
of both fits, metrics.json and the figures end up in the run. The MLflow store is read back with
MlflowClient; the offline W&B run files are read record by record (their LevelDB-style log)."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from pathlib import Path

import hydra
import pytest
from cli_runs import compose_config

from icolightning.cli.entry import describe
from icolightning.jobs.train import train

FIT = ["debug=tiny", "trainer.max_epochs=2", "test=false", "plots=false"]
RESUME = ["debug=tiny", "trainer.max_epochs=3", "ckpt_path=last"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any in-process connection to a non-loopback address fails the test (telemetry included)."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = host == "localhost"
            if not local:
                raise AssertionError(f"network access attempted: {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _fit_and_resume(root: Path, logger: str) -> Path:
    """A 2-epoch fit, then resume to 3 epochs with the test and figures; the run folder."""
    train(compose_config("train", root, "run", [f"logger={logger}", *FIT]))
    train(compose_config("train", root, "run", [f"logger={logger}", *RESUME]))
    return root / "run"


def test_mlflow_file_store_resumes_the_same_run_with_metrics_and_artifacts(tmp_path) -> None:
    mlflow = pytest.importorskip("mlflow")
    run_dir = _fit_and_resume(tmp_path, "mlflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("icolightning-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    run = runs[0]
    assert run.info.run_name == "tiny" and run.data.params["net/widths"] == "[4, 8]"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(steps) and min(steps) < 10 < max(steps)  # both fits (5 steps per epoch)
    val = client.get_metric_history(run.info.run_id, "val/mAP")
    assert len(val) == 3  # one per epoch: the first fit's two and the resumed fit's
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/mAP"] == pytest.approx(saved["test"]["test/mAP"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "prediction_map.png", "confusion_matrix.png"} <= artifacts
    logged = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "down")))
    assert json.loads(logged.read_text()) == saved


def test_a_fresh_fit_in_the_same_folder_starts_a_new_mlflow_run(tmp_path) -> None:
    mlflow = pytest.importorskip("mlflow")
    for _ in range(2):
        train(compose_config("train", tmp_path, "run", ["logger=mlflow", *FIT]))
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("icolightning-train")
    assert len(client.search_runs([experiment.experiment_id])) == 2


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (32 KiB blocks of 7-byte-headed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, head = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, pending = head, b""
    while pos + head <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + head]) if left >= head else (0, 0, 0)
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + head:pos + head + length]
        pos += head + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_resumes_the_same_run_with_metrics_and_files(tmp_path) -> None:
    pytest.importorskip("wandb")
    run_dir = _fit_and_resume(tmp_path, "wandb")
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)  # `wandb sync` joins them
    seen: dict[str, set] = {"run": set(), "history": set(), "config": set(), "files": set()}
    for path in offline:
        for record in wandb_records(path / f"run-{run_id}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                seen["run"].add(record.run.run_id)
            elif kind == "history":
                seen["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
            elif kind == "config":
                seen["config"] |= {i.key or "/".join(i.nested_key) for i in record.config.update}
            elif kind == "files":
                seen["files"] |= {f.path for f in record.files.files}
    assert seen["run"] == {run_id}
    assert {"train/loss", "val/mAP", "test/mAP"} <= seen["history"] and "net" in seen["config"]
    assert {"metrics.json", "prediction_map.png", "confusion_matrix.png"} <= seen["files"]
    assert (offline[-1] / "files" / "metrics.json").read_text() == (run_dir / "metrics.json").read_text()


@pytest.mark.parametrize(("logger", "extra"), [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, logger, extra) -> None:
    import icolightning.lightning.tracking as tracking

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == logger else real(name))
    cfg = compose_config("train", tmp_path, "run", [f"logger={logger}", *FIT])
    with pytest.raises(Exception) as caught:
        hydra.utils.instantiate(cfg.logger[logger])
    message, status = describe(caught.value)
    assert status == 2 and message == (
        f"logger={logger} needs the {logger} package: pip install 'icolightning[{extra}]'")
