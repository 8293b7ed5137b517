"""A SLURM job simulated on one machine: `trainer=slurm` (only accelerator, devices and precision
changed) in 2 processes started the way srun starts tasks, a stand-in `scontrol` on PATH, SIGUSR1
(time limit) or SIGTERM (pre-emption) sent to both tasks mid-epoch, then the "requeued" job with
the same command and environment. It ends with the weights of an uninterrupted job, although the
network draws random numbers every step (dropout 0.2).

Not covered: the real srun/slurmstepd (signal timing, --kill-on-bad-exit, KillWait), a real
`scontrol requeue`, several nodes (address resolution of SLURM_NODELIST, networking) and NCCL;
the processes talk over gloo on localhost.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

BIN = Path(sys.executable).parent
TASKS = 2
# 10 training samples over 2 ranks with batch 2: 3 steps per epoch, 6 in all. The signal arrives
# while rank 0 pauses in the end-of-step hooks of step 4; PreemptionCheckpoint runs after every
# other callback, so the checkpoint is written at that same step 4, inside epoch 2 (steps 4-6).
EPOCHS, PAUSE_AT, SIGNALLED_AT = 2, 4, 4


class PauseAtStep(L.Callback):
    """Rank 0 announces step `step` through a file and pauses, so the test signals at a known step."""

    def __init__(self, step: int, marker: str, seconds: float = 3.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_end(self, trainer, *_) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not Path(self.marker).exists():
            Path(self.marker).touch()
            time.sleep(self.seconds)


def _free_job_id() -> str:
    """A job id whose Lightning-derived port (15000 + last 4 digits) is free on this machine."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 15000 <= port <= 24999:
            return f"77{port - 15000:04d}"
    with socket.socket() as s:  # fall back: a random port in range, checked once
        port = 15000 + int.from_bytes(os.urandom(2), "big") % 10000
        s.bind(("127.0.0.1", port))
    return f"77{port - 15000:04d}"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job's folder, its SLURM environment and the stand-in scontrol's record."""
    root = tmp_path_factory.mktemp("slurm")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    record = root / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "RANK"))}
    env |= {
        "PATH": f"{bin_dir}:{env['PATH']}", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
        "SLURM_JOB_ID": _free_job_id(), "SLURM_JOB_NAME": "icolightning", "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_NTASKS": str(TASKS),
        "SLURM_NTASKS_PER_NODE": str(TASKS), "SLURM_NODEID": "0", "SLURM_CPUS_PER_TASK": "1",
    }
    return root, env, record


def _start(job, name: str, *extra: str) -> list[subprocess.Popen]:
    root, env, _ = job
    args = [str(BIN / "icolightning-train"), "trainer=slurm", "trainer.accelerator=cpu", f"trainer.devices={TASKS}",
            "trainer.precision=32-true", "debug=tiny", f"name={name}", f"paths.root_dir={root}",
            f"trainer.max_epochs={EPOCHS}", "trainer.deterministic=true", "test=false", "plots=false",
            "ckpt_path=last", "model.net.dropout=0.2", *extra]
    tasks = []
    for rank in range(TASKS):
        task_env = env | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        out = open(root / f"{name}-task{rank}.out", "a")  # noqa: SIM115 (closed with the process below)
        tasks.append(subprocess.Popen(args, cwd=root, env=task_env, stdout=out, stderr=subprocess.STDOUT))
        out.close()
    return tasks


def _wait(tasks: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    return [task.wait(timeout=timeout) for task in tasks]


def _output(job, name: str, rank: int) -> str:
    return (job[0] / f"{name}-task{rank}.out").read_text()


def _weights(job, name: str) -> dict:
    return torch.load(job[0] / "outputs" / "train" / name / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(job) -> dict:
    assert _wait(_start(job, "reference")) == [0] * TASKS, _output(job, "reference", 0)[-3000:]
    return _weights(job, "reference")


# SIGTERM without the requeue is slow-marked (+20-40 s): one process takes the same signal path in
# test_resume.py and test_preemption.py; `pytest -m slow tests/test_slurm.py` runs it on 2 processes.
@pytest.mark.parametrize("signum", [signal.SIGUSR1, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["requeue_SIGUSR1", "preempt_SIGTERM"])
def test_signal_checkpoint_then_requeued_job_matches_uninterrupted(job, uninterrupted, signum):
    root, _, record = job
    name = f"signalled-{signum.name}"
    run = root / "outputs" / "train" / name
    marker = root / f"{name}.step{PAUSE_AT}"
    requeues_before = record.read_text() if record.exists() else ""
    tasks = _start(job, name, "+callbacks.pause._target_=test_slurm.PauseAtStep", f"+callbacks.pause.step={PAUSE_AT}",
                   f"+callbacks.pause.marker={marker}")
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert time.monotonic() < deadline and all(t.poll() is None for t in tasks), _output(job, name, 0)[-3000:]
        time.sleep(0.05)
    for task in tasks:  # SLURM signals every task of the step
        os.kill(task.pid, signum)
    assert _wait(tasks) == [0] * TASKS, _output(job, name, 0)[-3000:]

    saved = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)
    assert saved["global_step"] == SIGNALLED_AT  # after the first step of the second epoch (steps 4-6)
    assert not (run / "metrics.json").exists()
    requeues = record.read_text()[len(requeues_before):] if record.exists() else ""
    assert requeues == (f"requeue {job[1]['SLURM_JOB_ID']}\n" if signum == signal.SIGUSR1 else "")

    assert _wait(_start(job, name)) == [0] * TASKS, _output(job, name, 0)[-3000:]  # the requeued job
    assert f"resuming from {run / 'hpc_ckpt_1.ckpt'}" in _output(job, name, 0)
    final = _weights(job, name)
    assert final["global_step"] == uninterrupted["global_step"] == EPOCHS * 3
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    assert len(final["callbacks"]["RNGStateCheckpoint"]["ranks"]) == TASKS

    # One config snapshot and one train.log, both rank 0's; rank 1 logs to its own file.
    assert (run / ".hydra" / "config.yaml").is_file() and not (run / "None").exists()
    saved_line = f"saved {run / 'hpc_ckpt_1.ckpt'} at step {SIGNALLED_AT}"  # logged by every rank
    assert (run / "train.log").read_text().count(saved_line) == 1
    assert (run / "train_rank1.log").read_text().count(saved_line) == 1
