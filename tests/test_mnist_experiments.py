"""scripts/mnist_experiments.py: the equal-wall-clock runs get the right epochs and run names in both
directions, the table tells the budgets apart, and finished runs are not trained again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mnist_experiments.py"


@pytest.fixture(scope="module")
def experiments():
    spec = importlib.util.spec_from_file_location("mnist_experiments", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(acc_n: float, epochs: int, fit_seconds: float) -> dict:
    return {"epochs": epochs, "fit_seconds": fit_seconds,
            "test": {"test/acc_N": acc_n, "test/acc_I": acc_n, "test/acc_R": acc_n / 2}}


def test_each_network_runs_again_for_its_twins_fit_time(experiments, monkeypatch, tmp_path):
    calls = []

    def fake_run(name, root, overrides):
        calls.append((name, overrides))
        return _result(0.9, int(overrides[-2].split("=")[1]), 0.0)

    monkeypatch.setattr(experiments, "run_experiment", fake_run)
    results = {"mnist_ico_n": _result(0.92, 10, 1200.0), "mnist_planar_n": _result(0.94, 10, 300.0),
               "mnist_ico_r": _result(0.6, 10, 1300.0)}  # no planar_r twin: no equal-time run for R
    runs = experiments.equal_time_runs(results, tmp_path, ["seed=1"])
    assert calls == [("mnist_ico_n", ["seed=1", "trainer.max_epochs=2", "name=mnist_ico_n_equal_time"]),
                     ("mnist_planar_n", ["seed=1", "trainer.max_epochs=40", "name=mnist_planar_n_equal_time"])]
    assert list(runs) == ["mnist_ico_n_equal_time", "mnist_planar_n_equal_time"]
    table = experiments.markdown_table(results | runs)
    rows = [line for line in table.splitlines() if line.startswith(("| icosahedral", "| planar"))]
    assert rows[0].startswith("| icosahedral CNN (IcoClassifier) | N | 92.00 |") and "| 10 |" in rows[0]
    assert rows[1].startswith("| icosahedral CNN (IcoClassifier), the planar run's time | N | 90.00 |")
    assert "| 2 |" in rows[1]
    assert rows[2].startswith("| icosahedral CNN (IcoClassifier) | R |")
    assert rows[3].startswith("| planar CNN on the 5 charts | N | 94.00 |")
    assert rows[4].startswith("| planar CNN on the 5 charts, the icosahedral run's time | N | 90.00 |")
    assert "| 40 |" in rows[4]

    calls.clear()
    assert list(experiments.equal_time_runs(results, tmp_path, [], ("ico",))) == ["mnist_ico_n_equal_time"]
    assert [call[0] for call in calls] == ["mnist_ico_n"]


def test_a_finished_run_is_read_back_not_trained_again(experiments, monkeypatch, tmp_path):
    metrics = tmp_path / "outputs" / "train" / "mnist_ico_n_equal_time" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"epochs": 3, "fit_seconds": 5.0}')
    (metrics.parent / ".hydra").mkdir()
    made_with = ["experiment=mnist_ico_n", f"paths.root_dir={tmp_path}", "trainer.max_epochs=3",
                 "name=mnist_ico_n_equal_time"]
    (metrics.parent / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in made_with))
    trained = []
    monkeypatch.setattr(experiments.subprocess, "run", lambda command, check: trained.append(command))
    assert experiments.run_experiment("mnist_ico_n", tmp_path, made_with[2:]) == {
        "epochs": 3, "fit_seconds": 5.0, "command": " ".join(["icolightning-train", *made_with])}
    with pytest.raises(SystemExit, match=r"trainer\.max_epochs=3"):  # same folder, other overrides: refused
        experiments.run_experiment("mnist_ico_n", tmp_path, ["trainer.max_epochs=5", "name=mnist_ico_n_equal_time"])
    assert trained == []
    with pytest.raises(FileNotFoundError):  # not finished: trained (here: a no-op), then its metrics are read
        experiments.run_experiment("mnist_planar_n", tmp_path, [])
    assert len(trained) == 1 and "experiment=mnist_planar_n" in trained[0]


def test_equal_time_epochs_round_to_at_least_one(experiments):
    assert experiments.equal_time_epochs({"fit_seconds": 100.0, "epochs": 10}, {"fit_seconds": 1234.0}) == 123
    assert experiments.equal_time_epochs({"fit_seconds": 100.0, "epochs": 1}, {"fit_seconds": 10.0}) == 1
