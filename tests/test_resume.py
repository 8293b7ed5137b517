"""Kill training with SIGKILL, resume with ckpt_path=last, and end with exactly the weights and
metrics of an uninterrupted run; resume with another length or after train/ changed.

The tiny set has 5 training steps per epoch. With checkpoints every 5 steps (debug=tiny) the newest
checkpoint before a kill at step 7 is the epoch boundary (step 5); with checkpoints every 3 steps
it is step 6, inside the second epoch. Both resume bit-identically: the training loader is a
torchdata StatefulDataLoader whose position and shuffle order Lightning stores in the checkpoint,
and RNGStateCheckpoint restores the generators; weights, optimiser, scheduler, loop counters and
callback states are Lightning's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

BIN = Path(sys.executable).parent


class KillAtStep(L.Callback):
    """Dies like a pre-empted job: SIGKILL, no cleanup, no final checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _train(root: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["debug=tiny", f"name={name}", f"paths.root_dir={root}", "trainer.max_epochs=3",
            "trainer.deterministic=true", "test=false", "plots=false", *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([str(BIN / "icolightning-train"), *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def _final(root: Path, name: str) -> tuple[dict, dict]:
    run = root / "outputs" / "train" / name
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return state, json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 3-epoch run that the resumed runs are compared with."""
    root = tmp_path_factory.mktemp("resume")
    full = _train(root, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    return root


@pytest.mark.parametrize(("every", "saved_at"), [(5, 5), (3, 6)], ids=["epoch_boundary", "mid_epoch"])
def test_sigkill_then_resume_matches_uninterrupted_run(reference, every, saved_at):
    name = f"resumed_every{every}"
    interval = f"callbacks.last.every_n_train_steps={every}"
    killed = _train(reference, name, interval, "+callbacks.kill._target_=test_resume.KillAtStep",
                    "+callbacks.kill.step=7")
    assert killed.returncode == -signal.SIGKILL
    run = reference / "outputs" / "train" / name
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_at

    resumed = _train(reference, name, interval, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert "not resumable" not in resumed.stdout + resumed.stderr  # Lightning's mid-epoch warning

    expected, expected_metrics = _final(reference, "full")
    state, metrics = _final(reference, name)
    assert state["global_step"] == expected["global_step"] == 15
    assert state["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][key], value), key
    assert metrics["val"] == expected_metrics["val"]
    assert metrics["best_score"] == expected_metrics["best_score"]


def test_one_last_checkpoint_per_run(tmp_path):
    """Both checkpoint callbacks refresh the same last.ckpt; none writes last-v1.ckpt."""
    run = _train(tmp_path, "single")
    assert run.returncode == 0, run.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "outputs" / "train" / "single" / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
