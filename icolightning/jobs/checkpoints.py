"""Which checkpoint a fit resumes from (agreed by all ranks), and what the fit leaves behind:
the final last.ckpt and the best checkpoint's score, also under ddp_spawn."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """"last" → the newest of the run's last*.ckpt and pre-emption/requeue hpc_ckpt_*.ckpt (None when
    the run has none yet, so the same command starts and resumes a job); paths pass through."""
    if ckpt_path != "last":
        return ckpt_path
    candidates = [*run_dir.glob("checkpoints/last*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    if not candidates:
        log.info("ckpt_path=last: no checkpoint in %s yet, starting from scratch", run_dir)
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("resuming from %s", newest)
    return str(newest)


def agreed_ckpt_path(trainer: L.Trainer, ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint to resume from, chosen by rank 0 and used by every rank.

    Ranks started by the cluster (srun, torchrun) resolve at the same time, possibly on nodes that
    see a shared file system differently, so they join the process group now (fit would do it first
    thing) and take rank 0's choice. Ranks that Lightning launches itself (LightningEnvironment: only
    the children count as started externally) start after rank 0 has resolved, on its machine, and
    resolve the same way.
    """
    strategy = trainer.strategy
    environment = getattr(strategy, "cluster_environment", None)
    if (trainer.world_size == 1 or environment is None or isinstance(environment, LightningEnvironment)
            or not environment.creates_processes_externally):
        return resolve_ckpt_path(ckpt_path, run_dir)
    strategy.setup_environment()
    choice = resolve_ckpt_path(ckpt_path, run_dir) if trainer.is_global_zero else None
    return strategy.broadcast(choice, src=0)


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where the checkpoint callbacks keep last.ckpt (None without such a callback)."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "save_last", False) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return None


def fitted_in_spawned_processes(trainer: L.Trainer) -> bool:
    """trainer.strategy=ddp_spawn fits in spawned processes; this one gets the weights and metrics back but
    not the loop state (its global_step stays 0), so it must not write last.ckpt over theirs."""
    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def best_model_score(trainer: L.Trainer, best: str | None) -> float | None:
    """The monitored value of the best checkpoint; under ddp_spawn this process only gets the path
    back, so the score comes from the callback state saved in that checkpoint."""
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None)
    if score is None and best and fitted_in_spawned_processes(trainer):
        states = torch.load(best, map_location="cpu", weights_only=True).get("callbacks", {}).values()
        score = next((s["best_model_score"] for s in states
                      if s.get("monitor") == callback.monitor and s.get("best_model_score") is not None), None)
    return None if score is None or not best else float(score)


def save_final_checkpoint(trainer: L.Trainer) -> tuple[str | None, int, int]:
    """Write the end-of-fit state as last.ckpt (the step-interval callback only saves every N steps);
    returns its path, global step and trained epochs (under ddp_spawn: those of the last.ckpt rank 0
    wrote, where an epoch counts once all its training batches ran)."""
    path = last_checkpoint_path(trainer)
    if path is None:
        return None, trainer.global_step, trainer.current_epoch
    if fitted_in_spawned_processes(trainer):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        epochs = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
        return str(path), int(saved["global_step"]), int(epochs)
    # Saving: weights_only=False keeps the whole training state (optimiser, loops) that a resume needs;
    # left unset, Lightning logs that it chose so. Loading is weights-only everywhere (docs/checkpoints.md).
    trainer.save_checkpoint(path, weights_only=False)
    return str(path), trainer.global_step, trainer.current_epoch
