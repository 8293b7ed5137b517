"""The job behind `icolightning-eval`: test-split metrics and figures of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from icolightning.errors import UsageError
from icolightning.jobs.common import (
    build_trainer,
    ensure_synthetic_data,
    metrics_table,
    output_dir,
    save_segmentation_figures,
    scalar_metrics,
    write_json,
)
from icolightning.lightning import load_module
from icolightning.lightning.segmentation import SegmentationModule


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
