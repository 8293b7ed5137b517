"""Kill training with SIGKILL, or stop it with SIGTERM in training, in the final validation or
between epochs, resume with ckpt_path=last, and end with exactly the weights, best checkpoint and
best score of an uninterrupted run, with the metrics history of the interrupted run kept; resume
with another length or after train/ changed.

The runs use dropout (model.net.dropout=0.2), so the model draws random numbers every step. The
tiny set has 5 training steps per epoch. With checkpoints every 5 steps (debug=tiny) the newest
checkpoint before a kill at step 7 is the epoch boundary (step 5); with checkpoints every 3 steps
it is step 6, inside the second epoch. Both resume bit-identically: the training loader is a
torchdata StatefulDataLoader whose position and shuffle order Lightning stores in the checkpoint,
and RNGStateCheckpoint restores the training steps' own generator stream; weights, optimiser,
scheduler, loop counters and callback states are Lightning's own.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import xarray as xr
from cli_runs import subprocess_env

BIN = Path(sys.executable).parent
RANDOM_MODEL = "model.net.dropout=0.2"


class KillAtStep(L.Callback):
    """Dies like a pre-empted job: SIGKILL, no cleanup, no final checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class TermAt(L.Callback):
    """Sends SIGTERM to this process once, at `point` of epoch `epoch`: a training batch, a
    validation batch, or the end of the epoch (between validation and the next epoch)."""

    def __init__(self, point: str, epoch: int) -> None:
        self.point, self.epoch, self.sent = point, epoch, False

    def _maybe(self, trainer, point: str) -> None:
        if point == self.point and trainer.current_epoch == self.epoch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, *_) -> None:
        self._maybe(trainer, "training")

    def on_validation_batch_start(self, trainer, *_) -> None:
        self._maybe(trainer, "validation")

    def on_train_epoch_end(self, trainer, *_) -> None:
        self._maybe(trainer, "between")


def _train(root: Path, name: str, *extra: str, epochs: int = 3) -> subprocess.CompletedProcess:
    args = ["debug=tiny", f"name={name}", f"paths.root_dir={root}", f"trainer.max_epochs={epochs}",
            "trainer.deterministic=true", "test=false", "plots=false", RANDOM_MODEL, "logger=many", *extra]
    return subprocess.run([str(BIN / "icolightning-train"), *args], cwd=root, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def _final(root: Path, name: str) -> tuple[dict, dict]:
    run = root / "outputs" / "train" / name
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return state, json.loads((run / "metrics.json").read_text())


def _csv_rows(root: Path, name: str) -> list[dict[str, str]]:
    with open(root / "outputs" / "train" / name / "csv" / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def _tensorboard_scalars(root: Path, name: str) -> set[tuple[str, int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "outputs" / "train" / name / "tensorboard")).Reload()
    return {(tag, e.step, e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}


def _assert_same_end(reference: Path, name: str) -> None:
    expected, expected_metrics = _final(reference, "full")
    state, metrics = _final(reference, name)
    assert state["global_step"] == expected["global_step"] == 15
    assert state["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][key], value), key
    assert metrics["val"] == expected_metrics["val"]
    assert metrics["best_score"] == expected_metrics["best_score"]
    assert Path(metrics["best_checkpoint"]).name == Path(expected_metrics["best_checkpoint"]).name


def _assert_history_kept(reference: Path, name: str, rows: list[dict], scalars: set) -> None:
    """Every row and scalar logged before the interruption is still there, and the resumed run added
    the rest: every step the uninterrupted run logged is present."""
    final_rows = _csv_rows(reference, name)
    assert rows and all(row in final_rows for row in rows)
    assert {r["step"] for r in final_rows} == {r["step"] for r in _csv_rows(reference, "full")}
    assert scalars and scalars <= _tensorboard_scalars(reference, name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 3-epoch run that the resumed runs are compared with."""
    root = tmp_path_factory.mktemp("resume")
    full = _train(root, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    return root


# The epoch-boundary SIGKILL and the between-epochs SIGTERM are slow-marked (CI time): the mid-epoch
# SIGKILL and the SIGTERMs inside training and validation are the harder cases and run in CI.
@pytest.mark.parametrize(("every", "saved_at"), [pytest.param(5, 5, id="epoch_boundary", marks=pytest.mark.slow),
                                                 pytest.param(3, 6, id="mid_epoch")])
def test_sigkill_then_resume_matches_uninterrupted_run(reference, every, saved_at):
    name = f"resumed_every{every}"
    interval = f"callbacks.last.every_n_train_steps={every}"
    killed = _train(reference, name, interval, "+callbacks.kill._target_=test_resume.KillAtStep",
                    "+callbacks.kill.step=7")
    assert killed.returncode == -signal.SIGKILL
    run = reference / "outputs" / "train" / name
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_at
    rows, scalars = _csv_rows(reference, name), _tensorboard_scalars(reference, name)

    resumed = _train(reference, name, interval, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stdout + resumed.stderr  # Lightning's mid-epoch warning
    _assert_same_end(reference, name)
    _assert_history_kept(reference, name, rows, scalars)


@pytest.mark.parametrize(("point", "epoch", "saved_at"), [("training", 1, 6), ("validation", 2, 15),
                                                          pytest.param("between", 1, 10, marks=pytest.mark.slow)])
def test_sigterm_anywhere_then_resume_matches_uninterrupted_run(reference, point, epoch, saved_at):
    """SIGTERM in the first step of epoch 2 (saved after it), in the final epoch's validation, or at the
    end of epoch 2."""
    name = f"sigterm_{point}"
    stopped = _train(reference, name, "+callbacks.term._target_=test_resume.TermAt",
                     f"+callbacks.term.point={point}", f"+callbacks.term.epoch={epoch}")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    run = reference / "outputs" / "train" / name
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == saved_at
    rows, scalars = _csv_rows(reference, name), _tensorboard_scalars(reference, name)

    resumed = _train(reference, name, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run / 'hpc_ckpt_1.ckpt'}" in resumed.stdout + resumed.stderr
    _assert_same_end(reference, name)
    _assert_history_kept(reference, name, rows, scalars)


def test_a_schedule_changed_on_resume_is_refused(reference):
    """OneCycleLR's max_lr changed on resume would be ignored by the restored schedule: refused."""
    copied = reference / "outputs" / "train" / "changed_lr"
    copied.mkdir(parents=True)
    (copied / "checkpoints").mkdir()
    (copied / "checkpoints" / "last.ckpt").write_bytes(
        (reference / "outputs" / "train" / "full" / "checkpoints" / "last.ckpt").read_bytes())
    refused = _train(reference, "changed_lr", "ckpt_path=last", "model.scheduler.max_lr=0.01", epochs=4)
    assert refused.returncode != 0
    assert "model.scheduler.max_lr=0.003 -> 0.01" in refused.stderr.strip().splitlines()[-1], refused.stderr[-2000:]


def test_one_last_checkpoint_per_run(reference):
    """Both checkpoint callbacks refresh the same last.ckpt; none writes last-v1.ckpt."""
    names = sorted(p.name for p in (reference / "outputs" / "train" / "full" / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names


def _one_cycle_lr(max_lr: float, total_steps: int, steps: int) -> float:
    """The learning rate of a fresh OneCycleLR (debug=tiny's settings) after `steps` steps."""
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=max_lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.2)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return optimizer.param_groups[0]["lr"]


def test_longer_resume_extends_the_schedule_and_keeps_the_checkpoint_statistics(tmp_path):
    """2 epochs, then train/ changes and the run resumes with 3 epochs: OneCycleLR is rebuilt for 15
    steps at step 10 (no `Tried to step 11 times`), and the model keeps the first run's statistics."""
    first = _train(tmp_path, "grow", epochs=2)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "outputs" / "train" / "grow"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["lr_schedulers"][0]["total_steps"] == saved["global_step"] == 10

    source = sorted((tmp_path / "data" / "synthetic_climatenet" / "train").glob("*.nc"))[0]
    with xr.open_dataset(source) as ds:
        changed = ds.load().assign(TMQ=ds.TMQ * 3 + 10)
    changed.to_netcdf(source)  # new size/mtime: the cache regrids it and the statistics change

    resumed = _train(tmp_path, "grow", "ckpt_path=last", epochs=3)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 15
    assert state["lr_schedulers"][0]["total_steps"] == state["lr_schedulers"][0]["last_epoch"] == 15
    final_lr = state["optimizer_states"][0]["param_groups"][0]["lr"]
    assert final_lr == pytest.approx(_one_cycle_lr(3e-3, 15, 15), rel=1e-9)
    assert state["hyper_parameters"]["data_stats"] == saved["hyper_parameters"]["data_stats"]
    assert torch.equal(state["state_dict"]["class_weights"], saved["state_dict"]["class_weights"])


def test_fixed_schedule_shorter_than_the_run_is_refused_before_the_first_step(reference):
    refused = _train(reference, "short", "+model.scheduler.total_steps=3", epochs=1)  # data already made
    assert refused.returncode != 0
    last_line = refused.stderr.strip().splitlines()[-1]
    assert "model.scheduler.total_steps=3 ends before the run does (5 steps)" in last_line, refused.stderr[-2000:]
    assert not (reference / "outputs" / "train" / "short" / "checkpoints").exists()
