"""What the jobs share: guards on the composed config, the Trainer, the run folder, synthetic data
on first use, and the results a job leaves behind (metrics.json, the table, figures)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig
from torch.utils.data import default_collate

from icolightning.errors import UsageError
from icolightning.grid import IcoGrid
from icolightning.lightning.segmentation import SegmentationModule
from icolightning.plots import background_channel, save_confusion_matrix, save_mask_maps

log = logging.getLogger(__name__)


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
    channel = background_channel(model.data_stats.get("variables") or [])
    background = x[:, channel].float().cpu().numpy()
    latlon = IcoGrid(int(model.data_stats.get("level", datamodule.level))).latlon
    save_mask_maps(run_dir / "prediction_map.png", latlon, prediction, model.class_names, truth=y.numpy(),
                   background=background, title=title)
