"""The jobs behind `icolightning-train` and `icolightning-eval`, as plain functions of a composed
Hydra config, so tests can run them in-process and the entry points stay thin."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from omegaconf import DictConfig
from torch.utils.data import default_collate

from icolightning.config_tree import CONFIG_DIR as CONFIG_DIR  # re-exported: tests and scripts compose from it
from icolightning.errors import UsageError
from icolightning.grid import IcoGrid
from icolightning.lightning.base import IcoTask, load_module
from icolightning.lightning.config import instantiate_list, instantiate_module, to_primitive
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import save_confusion_matrix, save_mask_maps

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------- guards and paths
def refuse_multirun_ddp(cfg: DictConfig) -> None:
    """Lightning's DDP re-runs the command line once per extra rank; under a Hydra multirun
    (`-m`) that command line is the whole sweep, so every rank would start a sweep of its own."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if strategy.startswith("ddp") and "spawn" not in strategy:
        raise UsageError(
            f"Hydra multirun (-m) cannot be combined with trainer.strategy={strategy}: Lightning launches "
            "the other DDP ranks by re-running the command line, which would re-launch the sweep in every "
            "rank. Run one command per configuration (e.g. a loop or a SLURM array), or use "
            "trainer.strategy=ddp_spawn for a sweep."
        )


def _choice(group: str) -> str | None:
    """The option chosen for a config group (e.g. trainer=gpu), when Hydra composed the config."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    """The configured Trainer; asking for a GPU on a machine without one is a usage error that says
    which option asked for it and how to run on the CPU instead."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        experiment = _choice("experiment")
        via = f"experiment={experiment} uses trainer={_choice('trainer')}" if experiment else (
            f"trainer={_choice('trainer')} sets trainer.accelerator={accelerator}")
        raise UsageError(f"{via}, but this machine has no CUDA GPU; add trainer=cpu to run on the CPU")
    return hydra.utils.instantiate(cfg.trainer, **kwargs)


def without_logger_callbacks(callbacks: list[Any], loggers: list[Any]) -> list[Any]:
    """Drop the callbacks that only report to a logger (LR monitor) when there is no logger (logger=none)."""
    if loggers:
        return callbacks
    kept = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if len(kept) < len(callbacks):
        log.info("logger=none: the learning-rate monitor is left out (it has nothing to report to)")
    return kept


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


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


def ensure_synthetic_data(cfg: DictConfig) -> None:
    """Generate the synthetic ClimateNet-layout set on first use (synthetic data configs only)."""
    spec = cfg.get("synthetic")
    if not spec:
        return
    data_dir = Path(cfg.data.data_dir)
    if (data_dir / "train").is_dir() and any((data_dir / "train").glob("*.nc")):
        return
    log.info("generating synthetic ClimateNet-layout data in %s (first use)", data_dir)
    hydra.utils.instantiate(spec, str(data_dir))


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
    trainer.save_checkpoint(path)
    return str(path), trainer.global_step, trainer.current_epoch


# ---------------------------------------------------------------------------------- results
def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Tensor/number metrics → JSON-friendly floats (NaN becomes null)."""
    out = {}
    for key, value in metrics.items():
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = None if math.isnan(number) else number
    return out


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def metrics_table(metrics: dict[str, float | None]) -> str:
    width = max(map(len, metrics), default=0)
    rows = [f"{key:<{width}}  {'n/a' if value is None else f'{value:.4f}'}" for key, value in metrics.items()]
    return "\n".join(rows)


@torch.no_grad()
def save_segmentation_figures(model: SegmentationModule, datamodule: L.LightningDataModule, run_dir: Path,
                              samples: int = 2, title: str = "") -> None:
    """After a test run: the confusion matrix, and truth vs prediction maps of the first test
    samples over their TMQ field (or the first input field)."""
    save_confusion_matrix(run_dir / "confusion_matrix.png", np.asarray(model.test_confusion), model.class_names)
    model.eval()
    # The split's first samples, not the first batch of the loader: under DDP that is rank 0's share.
    test_set = datamodule.test_dataloader().dataset
    x, y = default_collate([test_set[i] for i in range(min(samples, len(test_set)))])
    x = x.to(model.device)
    prediction = model(x).argmax(1).cpu().numpy()
    variables = list(model.data_stats.get("variables") or [])
    channel = variables.index("TMQ") if "TMQ" in variables else 0
    background = x[:, channel].float().cpu().numpy()
    latlon = IcoGrid(int(model.data_stats.get("level", datamodule.level))).latlon
    save_mask_maps(run_dir / "prediction_map.png", latlon, prediction, model.class_names, truth=y.numpy(),
                   background=background, title=title)


# ---------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and leave metrics.json and figures in the run folder."""
    refuse_multirun_ddp(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ensure_synthetic_data(cfg)
    run_dir = output_dir(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    model: IcoTask = instantiate_module(cfg.model)
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = without_logger_callbacks(instantiate_list(cfg.get("callbacks")), loggers)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False)
    results: dict[str, Any] = {"run_dir": str(run_dir), "config": to_primitive(cfg.model)}
    if cfg.train:
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=agreed_ckpt_path(trainer, cfg.ckpt_path, run_dir),
                    weights_only=True)
        results["fit_seconds"] = round(time.perf_counter() - started, 1)
        results["last_checkpoint"], results["global_step"], results["epochs"] = save_final_checkpoint(trainer)
        metrics = trainer.callback_metrics
        results["val"] = scalar_metrics({k: v for k, v in metrics.items() if k.startswith("val/")})
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
        log.info("results in %s:\n%s", run_dir, metrics_table(results.get("test", {})))
    return results


# ---------------------------------------------------------------------------------- evaluate
def refuse_other_data(stats: dict[str, Any], datamodule: Any, ckpt_path: str) -> None:
    """A checkpoint only evaluates on the variables and level it was trained on."""
    trained = (list(stats.get("variables") or []), stats.get("level"))
    configured = (list(datamodule.variables), datamodule.level)
    if trained != configured:
        raise UsageError(
            f"{ckpt_path} was trained on variables {trained[0]} at level {trained[1]}, but the data config "
            f"has {configured[0]} at level {configured[1]}: set data.variables and data.level (or the "
            "experiment) the checkpoint was trained with")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test-split metrics of a checkpoint: printed table, metrics.json, confusion and map PNGs."""
    L.seed_everything(cfg.seed, workers=True)
    model = load_module(cfg.ckpt_path)
    run_dir = output_dir(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    has_stats = bool(model.data_stats) and hasattr(datamodule, "set_normalization")
    if has_stats:
        refuse_other_data(model.data_stats, datamodule, cfg.ckpt_path)
    ensure_synthetic_data(cfg)
    if has_stats:
        # The training statistics, not ones recomputed from whatever train/ is next to test/.
        datamodule.set_normalization(model.data_stats)
    trainer = build_trainer(cfg, logger=False, callbacks=[])
    tested = trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics({k: v for d in tested for k, v in d.items()})
    results = {"checkpoint": str(cfg.ckpt_path), "test": metrics,
               "absent_classes": getattr(model, "absent_classes", {})}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", results)
        print(metrics_table(metrics))
        if isinstance(model, SegmentationModule):
            save_segmentation_figures(model, datamodule, run_dir, samples=cfg.num_map_samples,
                                      title=f"{Path(cfg.ckpt_path).name}: test samples")
        print(f"metrics and figures in {run_dir}")
    return results
