"""Checkpoint on pre-emption (SIGTERM) and on SLURM's requeue signal, at a safe point, on every rank.

Lightning 2.6 saves the SLURM requeue checkpoint inside the signal handler and, on SIGTERM,
broadcasts from inside the handler and saves nothing. A handler runs wherever the main thread is:
in the middle of an optimiser step (the checkpoint then mixes two steps) or between the collectives
of a DDP step (ranks then pair different collectives and hang). This callback replaces both
handlers, while training, with ones that only note the signal. At the end of each training step
(and after each validation) the ranks agree on whether any of them was signalled; if so, all save
`hpc_ckpt_N.ckpt` in the run folder (what `ckpt_path=last` resumes from), rank 0 runs
`scontrol requeue <job>` for the requeue signal under `SLURMEnvironment(auto_requeue=True)`, and
the run stops with Lightning's SIGTERMException (exit status 0: the job is requeued or pre-empted,
not failed). A signal is honoured within one training step, or after the validation it arrives in.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def slurm_job_id() -> str:
    """The id `scontrol requeue` takes: JOBID, or ARRAYJOBID_TASKID inside a job array."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected SLURM job id {job!r}")
    return job


def next_hpc_checkpoint(folder: Path) -> Path:
    """hpc_ckpt_<N+1>.ckpt after the highest N present (Lightning's naming)."""
    names = (re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name) for p in folder.glob("hpc_ckpt_*.ckpt"))
    numbers = [int(m.group(1)) for m in names if m]
    return folder / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


class PreemptionCheckpoint(L.Callback):
    """Save a resumable checkpoint and stop when the job is pre-empted (SIGTERM) or about to hit its
    time limit (SLURM's requeue signal, SIGUSR1 by default), then requeue under SLURM."""

    def __init__(self) -> None:
        self._received: set[int] = set()
        self._requeue_signal: int | None = None

    def _note(self, signum: int, _frame: object) -> None:
        self._received.add(signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its handlers just before training starts and restores the previous ones
        # when fitting ends; installing ours here replaces its handlers for the training loop only.
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self._requeue_signal = int(environment.requeue_signal or signal.SIGUSR1)
            signal.signal(self._requeue_signal, self._note)
        signal.signal(signal.SIGTERM, self._note)

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:  # not during trainer.validate
            self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        flags = torch.tensor([float(signal.SIGTERM in self._received),
                              float(self._requeue_signal in self._received)], device=trainer.strategy.root_device)
        term, requeue = (bool(v) for v in trainer.strategy.reduce(flags, reduce_op="max").tolist())
        if not (term or requeue):
            return
        path = trainer.strategy.broadcast(next_hpc_checkpoint(Path(trainer.default_root_dir)), src=0)
        trainer.save_checkpoint(path)
        reason = "requeue signal" if requeue else "SIGTERM"
        log.info("%s: saved %s at step %d", reason, path, trainer.global_step)
        if requeue and trainer.is_global_zero:
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], check=False)
            log.info("scontrol requeue %s: exit status %d", job, done.returncode)
        raise SIGTERMException
