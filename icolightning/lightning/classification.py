"""Whole-signal classification (spherical MNIST) with any classifier network ([B, C, N] → [B, K])."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from icolightning.lightning.base import IcoTask


class ClassificationModule(IcoTask):
    """Cross-entropy classification with top-1 accuracy (overall and class-balanced).

    Evaluation losses are sample-weighted means kept by torchmetrics (`MeanMetric`, synced by
    summing values and weights), so N DDP ranks with unequal sample counts give the one-process
    value; Lightning's `sync_dist` mean would not (it averages the integer sample counts).

    Several test dataloaders (e.g. one per rotation mode) are scored separately; they are
    named by the datamodule's `test_names` when it has one, otherwise by their index.

    Args:
        num_classes: number of classes K.
        label_smoothing: passed to the cross-entropy.
        Remaining arguments: see `IcoTask`.
    """

    def __init__(
        self,
        net: Mapping[str, Any] | nn.Module,
        num_classes: int,
        label_smoothing: float = 0.0,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool | str = False,
        data_stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, compile, data_stats)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_acc = nn.ModuleList()
        self.test_balanced_acc = nn.ModuleList()
        self.test_loss = nn.ModuleList()

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_loss.update(self._loss(logits, y), weight=x.shape[0])
        self.log("val/loss", self.val_loss, batch_size=x.shape[0])
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=x.shape[0])

    def _test_names(self) -> list[str]:
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, Sequence) else 1
        names = getattr(self.trainer.datamodule, "test_names", None)
        if names is not None and len(names) == count:
            return [str(n) for n in names]
        return [""] if count == 1 else [str(i) for i in range(count)]

    def on_test_start(self) -> None:
        k = self.hparams.num_classes
        self._test_suffixes = [f"_{n}" if n else "" for n in self._test_names()]
        count = len(self._test_suffixes)
        self.test_acc = nn.ModuleList(MulticlassAccuracy(k, average="micro") for _ in range(count))
        self.test_balanced_acc = nn.ModuleList(MulticlassAccuracy(k, average="macro") for _ in range(count))
        self.test_loss = nn.ModuleList(MeanMetric() for _ in range(count))
        for metrics in (self.test_acc, self.test_balanced_acc, self.test_loss):
            metrics.to(self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self(x)
        suffix = self._test_suffixes[dataloader_idx]
        self.test_acc[dataloader_idx](logits, y)
        self.test_balanced_acc[dataloader_idx](logits, y)
        self.test_loss[dataloader_idx].update(self._loss(logits, y), weight=x.shape[0])
        log = {"batch_size": x.shape[0], "add_dataloader_idx": False}
        self.log(f"test/loss{suffix}", self.test_loss[dataloader_idx], **log)
        self.log(f"test/acc{suffix}", self.test_acc[dataloader_idx], **log)
        self.log(f"test/balanced_acc{suffix}", self.test_balanced_acc[dataloader_idx], **log)

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0
                     ) -> Tensor:
        """Class probabilities [B, K]."""
        x = batch[0] if isinstance(batch, tuple | list) else batch
        return self(x).float().softmax(1)
