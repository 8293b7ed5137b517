"""Climate pattern segmentation (BG / TC / AR) on vertex tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from icolightning.classes import CLIMATE_CLASSES, EVENT_CLASSES
from icolightning.lightning.base import IcoTask
from icolightning.lightning.losses import LOSSES, SplitLoss, inverse_frequency_weights, segmentation_loss
from icolightning.metrics.events import EventDetection
from icolightning.metrics.segmentation import ClimateMetrics


class SegmentationModule(IcoTask):
    """Wraps a segmentation network ([B, C, N] → logits [B, K, N]) with loss and climate metrics.

    Args:
        class_names: names of the K classes, in label order.
        event_classes: classes whose APs are averaged into mAP.
        loss: "weighted_ce" (weights from training-split class frequencies, see
            `inverse_frequency_weights`), "ce", "jaccard" or "dice".
        class_weight_power: exponent of the inverse-frequency weights.
        ap_bins: score bins (thresholds) of the binned average precision.
        metrics: options of the climate metrics; ``weighting``: "area" (default: each vertex
            weighted by its Voronoi cell, so IoU is a fraction of the Earth's surface) or
            "vertex" (every vertex counts once). Both are reported; see `ClimateMetrics`.
        Remaining arguments: see `IcoTask`.
    """

    def __init__(
        self,
        net: Mapping[str, Any] | nn.Module,
        class_names: Sequence[str] = CLIMATE_CLASSES,
        event_classes: Sequence[str] = EVENT_CLASSES,
        loss: str = "weighted_ce",
        class_weight_power: float = 1.0,
        ap_bins: int = 1000,
        metrics: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool | str = False,
        data_stats: Mapping[str, Any] | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        super().__init__(net, optimizer, scheduler, compile, data_stats)
        self.class_names = list(class_names)
        self.register_buffer("class_weights", torch.ones(len(self.class_names)))
        metric_args = {"class_names": self.class_names, "event_classes": list(event_classes),
                       "ap_bins": ap_bins, "weighting": dict(metrics or {}).get("weighting", "area")}
        self.val_metrics = ClimateMetrics(**metric_args)
        self.test_metrics = ClimateMetrics(**metric_args)
        self.val_loss = SplitLoss(loss, len(self.class_names))
        self.test_loss = SplitLoss(loss, len(self.class_names))
        self.test_events = EventDetection(self.class_names, list(event_classes))
        self.test_confusion: Tensor | None = None
        """Global [K, K] confusion counts of the last test run (for the evaluation figures)."""
        self.absent_classes: dict[str, list[str]] = {}
        """Per stage ("val", "test"): classes missing from the labels of the last epoch, left out of the means."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        frequencies = self.data_stats.get("class_frequencies")
        if stage == "fit" and self.hparams.loss == "weighted_ce":
            if frequencies is None:
                raise ValueError("loss=weighted_ce needs class_frequencies from the datamodule's data_stats")
            weights = inverse_frequency_weights(torch.as_tensor(frequencies), self.hparams.class_weight_power)
            self.class_weights.copy_(weights)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return segmentation_loss(self.hparams.loss, logits, target, self.class_weights)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], metrics: ClimateMetrics, loss: SplitLoss, prefix: str
                  ) -> Tensor:
        x, y = batch
        logits = self(x)
        loss.update(logits, y, self.class_weights)
        self.log(f"{prefix}/loss", loss, batch_size=x.shape[0])
        metrics.update(logits.float().softmax(1), y)
        return logits

    def _log_metrics(self, metrics: Metric, prefix: str) -> dict[str, Tensor]:
        values = metrics.compute()
        if "present" in values:  # ClimateMetrics: report classes that the labels never showed
            self._note_absent_classes(values["present"], prefix)
        self.log_dict({f"{prefix}/{key}": value.float() for key, value in values.items() if value.ndim == 0})
        metrics.reset()
        return values

    def _note_absent_classes(self, present: Tensor, prefix: str) -> None:
        absent = [name for name, seen in zip(self.class_names, present.tolist(), strict=True) if not seen]
        self.absent_classes[prefix] = absent
        if absent:
            rank_zero_warn(f"{prefix}: no {', '.join(absent)} vertex in the labels; left out of the mean "
                           "accuracy, mAP and mean IoU (their per-class values are NaN)")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        logits = self._evaluate(batch, self.test_metrics, self.test_loss, "test")
        self.test_events.update(logits.argmax(1), batch[1])

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self._log_metrics(self.test_metrics, "test")["confusion"].cpu()
        self._log_metrics(self.test_events, "test")

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities [B, K, N]."""
        x = batch[0] if isinstance(batch, tuple | list) else batch
        return self(x).float().softmax(1)
