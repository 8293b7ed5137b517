"""The job behind `icolightning-train`: fit, test the best checkpoint, leave metrics.json and figures."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from icolightning.config import instantiate_list, instantiate_module, to_primitive
from icolightning.jobs.checkpoints import agreed_ckpt_path, best_model_score, resolve_ckpt_path, save_final_checkpoint
from icolightning.jobs.common import (
    build_trainer,
    ensure_synthetic_data,
    metrics_table,
    output_dir,
    refuse_multirun_ddp,
    save_segmentation_figures,
    scalar_metrics,
    without_logger_callbacks,
    write_json,
)
from icolightning.lightning.base import IcoTask
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.lightning.tracking import log_run_files, resume_runs
from icolightning.nn.allocator import reuse_freed_memory

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and leave metrics.json and figures in the run folder."""
    refuse_multirun_ddp(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ensure_synthetic_data(cfg)
    run_dir = output_dir(cfg)
    memory_reuse = bool(cfg.get("reuse_freed_memory")) and reuse_freed_memory()  # before any activation
    datamodule = hydra.utils.instantiate(cfg.data)
    model: IcoTask = instantiate_module(cfg.model)
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = without_logger_callbacks(instantiate_list(cfg.get("callbacks")), loggers)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    results: dict[str, Any] = {"run_dir": str(run_dir), "config": to_primitive(cfg.model),
                               "host_memory_reuse": memory_reuse}
    if cfg.train:
        started = time.perf_counter()
        ckpt_path = agreed_ckpt_path(trainer, cfg.ckpt_path, run_dir)
        if ckpt_path and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve()):
            resume_runs(loggers)  # MLflow / W&B append to the run this folder's earlier fit created
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        results["fit_seconds"] = round(time.perf_counter() - started, 1)
        results["last_checkpoint"], results["global_step"], results["epochs"] = save_final_checkpoint(trainer)
        metrics = trainer.callback_metrics
        # A run resumed after its last validation runs none: the checkpoint's metrics are the latest.
        results["val"] = scalar_metrics({**model.restored_val_metrics,
                                         **{k: v for k, v in metrics.items() if k.startswith("val/")}})
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    results["best_checkpoint"] = best
    score = best_model_score(trainer, best)
    if score is not None:  # None without a monitored metric (callbacks=none)
        results["best_score"] = score
    if cfg.test:
        tested_ckpt = best if cfg.train else resolve_ckpt_path(cfg.ckpt_path, run_dir)
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=tested_ckpt, weights_only=True)
        results["test"] = scalar_metrics({k: v for d in tested for k, v in d.items()})
    results["absent_classes"] = getattr(model, "absent_classes", {})
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", results)
        if cfg.get("plots") and cfg.test and isinstance(model, SegmentationModule):
            save_segmentation_figures(model, datamodule, run_dir, title=f"{cfg.name}: test samples")
        log_run_files(loggers, [run_dir / "metrics.json", *sorted(run_dir.glob("*.png"))])
        log.info("results in %s:\n%s", run_dir, metrics_table(results.get("test", {})))
    return results
