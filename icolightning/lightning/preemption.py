"""Checkpoint on pre-emption (SIGTERM) and on SLURM's requeue signal, at a safe point, on every rank.

Lightning 2.6 saves the SLURM requeue checkpoint inside the signal handler and, on SIGTERM,
broadcasts from inside the handler and saves nothing. A handler runs wherever the main thread is:
in the middle of an optimiser step (the checkpoint then mixes two steps) or between the collectives
of a DDP step (ranks then pair different collectives and hang). This callback replaces both
handlers, while training, with ones that only note the signal. The safe points are the end of an
optimiser step (not of every micro-batch under gradient accumulation), the end of a mid-epoch
validation and the end of an epoch (after its validation), each after the ModelCheckpoint callbacks
have recorded it (this callback moves itself to the end of the callback list: a signal during the
final epoch's validation keeps that epoch's best checkpoint). There the ranks agree on whether any
of them was signalled; if so, all save `hpc_ckpt_N.ckpt` in the run folder (what `ckpt_path=last` resumes from), rank 0
runs `scontrol requeue <job>` for the requeue signal under `SLURMEnvironment(auto_requeue=True)`,
and the run stops with Lightning's SIGTERMException (exit status 0: the job is requeued or
pre-empted, not failed).

One process needs no agreement, so nothing is synchronised. Under DDP the agreement is an
all-reduce of two flags; on an accelerator it costs a host-device sync, so it runs every
`sync_every_n_steps` optimiser steps there (default 10) and after every step on CPU processes.
A signal is honoured within that many steps, or after the validation it arrives in.
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
from lightning.pytorch.callbacks import Checkpoint
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


class PreemptionCheckpoint(Checkpoint):
    """Save a resumable checkpoint and stop when the job is pre-empted (SIGTERM) or about to hit its
    time limit (SLURM's requeue signal, SIGUSR1 by default), then requeue under SLURM.

    Args:
        sync_every_n_steps: under DDP on an accelerator, agree on the signal every N optimiser steps
            (None: 10 there, every step for CPU processes, where the all-reduce costs no device sync).
    """

    DEFAULT_SYNC_STEPS = 10

    def __init__(self, sync_every_n_steps: int | None = None) -> None:
        self._received: set[int] = set()
        self._requeue_signal: int | None = None
        self._sync_every = sync_every_n_steps
        self._checked_step = -1

    def _note(self, signum: int, _frame: object) -> None:
        self._received.add(signum)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Last of all callbacks, so its checkpoint holds what every other callback recorded at that point.
        trainer.callbacks.remove(self)
        trainer.callbacks.append(self)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installs its handlers just before training starts and restores the previous ones
        # when fitting ends; installing ours here replaces its handlers for the training loop only.
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            self._requeue_signal = int(environment.requeue_signal or signal.SIGUSR1)
            signal.signal(self._requeue_signal, self._note)
        signal.signal(signal.SIGTERM, self._note)
        self._checked_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self._checked_step:  # a micro-batch of an accumulation, no optimiser step
            return
        self._checked_step = trainer.global_step
        if trainer.world_size > 1 and trainer.global_step % self._steps_between_syncs(trainer):
            return
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:  # not during trainer.validate
            return
        if not getattr(trainer.fit_loop.epoch_loop, "_is_training_done", False):  # a mid-epoch validation
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch-end validation and after ModelCheckpoint, which saves here by default.
        self._stop_if_signalled(trainer)

    def _steps_between_syncs(self, trainer: L.Trainer) -> int:
        if self._sync_every is not None:
            return max(1, self._sync_every)
        return 1 if trainer.strategy.root_device.type == "cpu" else self.DEFAULT_SYNC_STEPS

    def _signalled(self, trainer: L.Trainer) -> tuple[bool, bool]:
        """(SIGTERM, requeue signal) received by any rank."""
        mine = (signal.SIGTERM in self._received, self._requeue_signal in self._received)
        if trainer.world_size == 1:
            return mine
        flags = torch.tensor([float(v) for v in mine], device=trainer.strategy.root_device)
        term, requeue = (bool(v) for v in trainer.strategy.reduce(flags, reduce_op="max").tolist())
        return term, requeue

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        term, requeue = self._signalled(trainer)
        if not (term or requeue):
            return
        path = trainer.strategy.broadcast(next_hpc_checkpoint(Path(trainer.default_root_dir)), src=0)
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: the requeued job resumes from it
        reason = "requeue signal" if requeue else "SIGTERM"
        log.info("%s: saved %s at step %d", reason, path, trainer.global_step)
        if requeue and trainer.is_global_zero:
            job = slurm_job_id()
            done = subprocess.run(["scontrol", "requeue", job], check=False)
            log.info("scontrol requeue %s: exit status %d", job, done.returncode)
        raise SIGTERMException
