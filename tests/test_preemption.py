"""PreemptionCheckpoint in one process: a SIGTERM that arrives during validation is honoured after
that validation (hpc_ckpt_1.ckpt, then Lightning's SIGTERMException), not at some later step.
The 2-process SLURM job with signals during training steps is tests/test_slurm.py."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import SIGTERMException

from icolightning.lightning.preemption import PreemptionCheckpoint, next_hpc_checkpoint


class TermDuringValidation(L.Callback):
    def on_validation_batch_start(self, trainer, *_) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_validation_saves_after_it_and_stops(tmp_path):
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=2,
                        callbacks=[PreemptionCheckpoint(), TermDuringValidation()], logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(SIGTERMException):
        trainer.fit(BoringModel())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_1.ckpt"]
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 8  # end of epoch 2
    assert trainer.global_step == 8


def test_hpc_checkpoints_are_numbered_after_the_highest(tmp_path):
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "hpc_ckpt_x.ckpt"):
        (tmp_path / name).touch()
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_11.ckpt"
