"""What the segmentation and classification modules share: building the network from a config
dict, optimiser and scheduler from config, optional compilation, and checkpoints that load
with ``torch.load(weights_only=True)`` whether or not either side was compiled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import lightning as L
from torch import Tensor, nn

from icolightning.config import to_primitive
from icolightning.lightning.schedule import build_scheduler, extend_scheduler, refuse_changed_schedule
from icolightning.nn.norm import set_batchnorm_sync

DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 1e-2}
COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(state_dict: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Rename keys so that a compiled network's state loads into an uncompiled one and back.

    `torch.compile(module)` wraps the module, so its keys read `net._orig_mod.x` instead of
    `net.x`. Keys are matched to `expected` after removing the prefix from both sides.
    """
    canonical = {key.replace(COMPILE_PREFIX, ""): key for key in expected}
    return {canonical.get(key.replace(COMPILE_PREFIX, ""), key): value for key, value in state_dict.items()}


def datamodule_stats(datamodule: Any) -> dict[str, Any] | None:
    """The datamodule's normalisation statistics and class frequencies as plain values.

    ClimateDataModule exposes them as `normalization` (with `to_dict()`), available after its
    setup; datamodules without statistics (spherical MNIST) give None.
    """
    stats = getattr(datamodule, "normalization", None) if datamodule is not None else None
    if stats is None:
        return None
    return to_primitive(stats.to_dict() if hasattr(stats, "to_dict") else dict(stats))


def restore_pending_loader_states(trainer: L.Trainer) -> None:
    """Load the training loader states of the checkpoint that Lightning 2.6 left unloaded.

    `configure_optimizers` reads `trainer.estimated_stepping_batches`, which builds the training
    loader before the checkpoint is restored; Lightning then stashes the loader states and never
    loads them (Lightning-AI/pytorch-lightning#20550), so a mid-epoch resume would restart the
    epoch's data. Here, before the first step, the states are loaded and the iterator re-created
    for the restored epoch (samplers with `set_epoch` learn it first: the re-created iterator
    fast-forwards through that epoch's order at once).
    """
    loop = trainer.fit_loop
    if not getattr(loop, "_combined_loader_states_to_load", None) or loop._combined_loader is None:
        return
    for loader in loop._combined_loader.flattened:
        batch_sampler = getattr(loader, "batch_sampler", None)
        for sampler in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(loop.epoch_progress.current.processed)
    loop._load_combined_loader_states()
    iter(loop._data_fetcher)


class IcoTask(L.LightningModule):
    """Base LightningModule around any `nn.Module` network.

    Args:
        net: a Hydra config dict with `_target_` (stored in the checkpoint, so the network is
            rebuilt at load time) or an already built module (then pass it again when loading).
        optimizer: config dict of a `torch.optim` class (parameters are passed in here).
        scheduler: optional config dict of an LR scheduler plus `interval` ("step" or "epoch")
            and `monitor`; `total_steps` / `T_max` / `total_iters` default to the training horizon
            and follow it when a resumed run is longer or shorter (see `icolightning.lightning.schedule`).
        compile: compile the network with `nn.Module.compile` (True, or a backend name).
        data_stats: normalisation statistics and other facts about the training data that
            eval/predict need (filled in from the datamodule when fitting starts; a resume keeps
            the checkpoint's).
    """

    def __init__(
        self,
        net: Mapping[str, Any] | nn.Module,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool | str = False,
        data_stats: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"] if isinstance(net, nn.Module) else None)
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_primitive(value)
        self.net = net if isinstance(net, nn.Module) else hydra.utils.instantiate(to_primitive(net))
        self._restored_scheduler: Mapping[str, Any] | None = None
        """The scheduler config of the checkpoint a fit resumes from (`on_load_checkpoint`)."""
        self.restored_val_metrics: dict[str, float] = {}
        """The validation metrics saved in that checkpoint."""
        if compile:
            self.net.compile(**({"backend": compile} if isinstance(compile, str) else {}))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # ------------------------------------------------------------------ data statistics
    def setup(self, stage: str) -> None:
        """Take the training-split statistics from the datamodule (its `normalization`), if any."""
        if stage == "fit":
            stats = datamodule_stats(self.trainer.datamodule)
            if stats:
                self.hparams["data_stats"] = stats

    def on_fit_start(self) -> None:
        """Honour ``Trainer(sync_batchnorm=True)`` for the equivariant batch norms.

        Lightning's layer sync swaps torch ``_BatchNorm`` layers for ``SyncBatchNorm``; `IcoBatchNorm`
        is not one (it reads an `IcoSignal` and must work over gloo), so it syncs itself when told.
        """
        if getattr(self.trainer.strategy, "_layer_sync", None) is not None:
            set_batchnorm_sync(self.net, True)

    def on_fit_end(self) -> None:
        set_batchnorm_sync(self.net, False)

    @property
    def data_stats(self) -> dict[str, Any]:
        return dict(self.hparams.get("data_stats") or {})

    # ------------------------------------------------------------------ optimisation
    def _scheduler_config(self) -> tuple[dict[str, Any], str, str]:
        """The scheduler's constructor config, its interval and monitored metric."""
        cfg = dict(self.hparams.scheduler)
        return cfg, cfg.pop("interval", "epoch"), cfg.pop("monitor", "val/loss")

    def _schedule_horizon(self, interval: str) -> int:
        return int(self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs)

    def configure_optimizers(self) -> Any:
        cfg = dict(self.hparams.optimizer or DEFAULT_OPTIMIZER)
        optimizer = hydra.utils.instantiate(cfg, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        cfg, interval, monitor = self._scheduler_config()
        scheduler = build_scheduler(cfg, optimizer, self._schedule_horizon(interval), f"{interval}s")
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval, "monitor": monitor}}

    def on_train_start(self) -> None:
        """After a resume: the training loader's saved position, a refusal of a changed schedule, and
        the restored schedule stretched (or shrunk) to this run's horizon."""
        restore_pending_loader_states(self.trainer)
        if self.trainer.ckpt_path is not None:
            refuse_changed_schedule(self._restored_scheduler, self.hparams.scheduler)
        if not self.hparams.scheduler:
            return
        cfg, interval, _ = self._scheduler_config()
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler = extend_scheduler(config.scheduler, cfg, self._schedule_horizon(interval))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module class so `load_module` can rebuild any task from the file alone, and the
        latest validation metrics, which a run resumed after its last validation does not recompute."""
        checkpoint["icolightning_module"] = f"{type(self).__module__}.{type(self).__qualname__}"
        metrics = self._trainer.callback_metrics if self._trainer is not None else {}
        checkpoint["val_metrics"] = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Accept compiled/uncompiled weights; on a resume keep the checkpoint's data statistics
        (`setup` filled in ones recomputed from whatever train/ holds now, before the restore)."""
        checkpoint["state_dict"] = strip_compile_prefix(checkpoint["state_dict"], set(self.state_dict()))
        self._restored_scheduler = checkpoint.get("hyper_parameters", {}).get("scheduler")
        self.restored_val_metrics = dict(checkpoint.get("val_metrics") or {})
        stats = checkpoint.get("hyper_parameters", {}).get("data_stats")
        if stats:
            self.hparams["data_stats"] = stats
