"""PreemptionCheckpoint in one process: a SIGTERM that arrives during validation is honoured after
that validation and after the ModelCheckpoint callbacks recorded it (hpc_ckpt_1.ckpt keeps that
epoch's best checkpoint), at the end of an optimiser step under gradient accumulation, and without
any collective in one process. The 2-process SLURM job with signals during training steps is
tests/test_slurm.py; resumed runs after each signal are tests/test_resume.py."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from icolightning.lightning.preemption import PreemptionCheckpoint, next_hpc_checkpoint


class ImprovingModel(BoringModel):
    """Logs a validation score that improves every epoch, so every epoch's checkpoint is the best."""

    def validation_step(self, batch, batch_idx):
        self.log("score", float(self.current_epoch))
        return super().validation_step(batch, batch_idx)


class TermAt(L.Callback):
    """Sends SIGTERM to this process during validation of `epoch`, or before training batch `batch`."""

    def __init__(self, epoch: int | None = None, batch: int | None = None) -> None:
        self.epoch, self.batch = epoch, batch

    def on_validation_batch_start(self, trainer, *_) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def _trainer(tmp_path, *callbacks, **kwargs) -> L.Trainer:
    options = dict(max_epochs=3, limit_train_batches=4, limit_val_batches=2, logger=False,
                   enable_progress_bar=False, enable_model_summary=False) | kwargs
    return L.Trainer(default_root_dir=tmp_path, callbacks=list(callbacks), **options)


def test_sigterm_during_validation_saves_after_it_and_stops(tmp_path):
    trainer = _trainer(tmp_path, PreemptionCheckpoint(), TermAt(epoch=1))
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_1.ckpt"]
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 8  # end of epoch 2
    assert trainer.global_step == 8


def test_sigterm_during_the_final_validation_keeps_that_epochs_best_checkpoint(tmp_path):
    """The pre-emption callback is listed first, yet saves after ModelCheckpoint recorded the epoch."""
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="score", mode="max", filename="best-{epoch}")
    trainer = _trainer(tmp_path, PreemptionCheckpoint(), TermAt(epoch=2), best)
    with pytest.raises(SIGTERMException):
        trainer.fit(ImprovingModel())
    saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)
    state = next(s for k, s in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["best_model_path"] == str(tmp_path / "checkpoints" / "best-epoch=2.ckpt")
    assert float(state["best_model_score"]) == 2.0
    assert (tmp_path / "checkpoints" / "best-epoch=2.ckpt").is_file()


def test_under_gradient_accumulation_the_checkpoint_lands_after_an_optimiser_step(tmp_path):
    trainer = _trainer(tmp_path, PreemptionCheckpoint(), TermAt(batch=2), accumulate_grad_batches=2,
                       limit_val_batches=0)
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())  # signalled before micro-batch 2, the first of the second step
    saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)
    batches = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert (saved["global_step"], batches) == (2, 4)  # not (1, 3): mid-accumulation


def test_one_process_checks_the_signal_without_a_collective(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, PreemptionCheckpoint(), max_epochs=1)
    reduce, calls = type(trainer.strategy).reduce, []
    monkeypatch.setattr(type(trainer.strategy), "reduce",
                        lambda self, value, *a, **k: calls.append(k.get("reduce_op")) or reduce(self, value, *a, **k))
    trainer.fit(BoringModel())
    assert trainer.global_step == 4
    assert "max" not in calls  # the flags' all-reduce (Lightning's own "sum" of loader lengths is not ours)


def test_ddp_agrees_every_step_on_cpu_and_every_n_steps_on_an_accelerator():
    def trainer(device: str):
        return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    assert PreemptionCheckpoint()._steps_between_syncs(trainer("cpu")) == 1
    assert PreemptionCheckpoint()._steps_between_syncs(trainer("meta")) == PreemptionCheckpoint.DEFAULT_SYNC_STEPS
    assert PreemptionCheckpoint(sync_every_n_steps=3)._steps_between_syncs(trainer("cpu")) == 3


def test_hpc_checkpoints_are_numbered_after_the_highest(tmp_path):
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "hpc_ckpt_x.ckpt"):
        (tmp_path / name).touch()
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_11.ckpt"
