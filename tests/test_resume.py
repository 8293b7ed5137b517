"""Kill training with SIGKILL in the middle of an epoch, resume with ckpt_path=last, and end with
exactly the weights and metrics of an uninterrupted run.

Checkpoints are written every 5 steps (debug=tiny), which is one epoch of the tiny set, so the
newest checkpoint before the kill at step 7 is the epoch boundary at step 5. What a resume from
a checkpoint written *inside* an epoch cannot restore: ClimateDataModule's training DataLoader has
no `state_dict`, so Lightning restarts that epoch's iterator and draws the remaining batches from
a fresh shuffle (it warns about it); the weights then differ from an uninterrupted run although
the step and epoch counts agree. Everything else is restored: weights, optimiser and scheduler,
loop counters, callback states and (RNGStateCheckpoint) the random number generators.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
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


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = _train(tmp_path, "full")
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _train(tmp_path, "resumed", "+callbacks.kill._target_=test_resume.KillAtStep",
                    "+callbacks.kill.step=7")
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "outputs" / "train" / "resumed"
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5

    resumed = _train(tmp_path, "resumed", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    reference, reference_metrics = _final(tmp_path, "full")
    state, metrics = _final(tmp_path, "resumed")
    assert state["global_step"] == reference["global_step"] == 15
    assert state["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert torch.equal(state["state_dict"][key], value), key
    assert metrics["val"] == reference_metrics["val"]
    assert metrics["best_score"] == reference_metrics["best_score"]


def test_one_last_checkpoint_per_run(tmp_path):
    """Both checkpoint callbacks refresh the same last.ckpt; none writes last-v1.ckpt."""
    run = _train(tmp_path, "single")
    assert run.returncode == 0, run.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "outputs" / "train" / "single" / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
