"""A test instrument added to a training run from the command line
(`+callbacks.probe._target_=ddp_probe.BatchNormProbe +callbacks.probe.out_dir=DIR`): after
every training batch each rank records its batch-norm running statistics and a fingerprint of
its input batch, and saves them as DIR/rank<r>.pt when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from icolightning.nn.norm import IcoBatchNorm


class BatchNormProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stats = {name: buffer.detach().clone() for name, buffer in pl_module.named_buffers()
                 if name.endswith(("running_mean", "running_var"))}
        stats["input_sum"] = batch[0].detach().double().sum()
        self.steps.append(stats)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        syncing = [m.sync for m in pl_module.modules() if isinstance(m, IcoBatchNorm)]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"steps": self.steps, "sync": syncing}, self.out_dir / f"rank{trainer.global_rank}.pt")
