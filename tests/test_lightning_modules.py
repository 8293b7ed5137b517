"""The LightningModules with the real networks and data: fit, weights-only checkpoints that carry
the normalisation statistics, compiled <-> uncompiled loading, losses, schedulers, classification
with several named test loaders."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import ClimateDataModule
from datamodules.climatenet.synthetic import generate_dataset
from icolightning.grid import IcoGrid
from icolightning.lightning import ClassificationModule, SegmentationModule, load_module
from icolightning.lightning.base import strip_compile_prefix
from icolightning.lightning.losses import LOSSES, inverse_frequency_weights, segmentation_loss

UNET = {"_target_": "icolightning.models.IcoUNet", "in_channels": 4, "num_classes": 3, "level": 2,
        "widths": [4, 8]}
CLASSIFIER = {"_target_": "icolightning.models.IcoClassifier", "in_channels": 1, "num_classes": 4,
              "level": 2, "widths": [4, 8], "hidden": 8}
ONECYCLE = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 1e-2, "interval": "step"}


@pytest.fixture(scope="module")
def climate(tmp_path_factory):
    root = tmp_path_factory.mktemp("climate")
    generate_dataset(root / "data", n_train=8, n_test=2, nlat=24, nlon=48, seed=3)
    return root


def _datamodule(root) -> ClimateDataModule:
    return ClimateDataModule(root / "data", level=2, variables="climatenet4", cache_dir=root / "cache",
                             batch_size=2, progress=False, preprocess_workers=1)


def _trainer(root, **kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": root, "num_sanity_val_steps": 0}
    return L.Trainer(**(options | kwargs))


@pytest.fixture(scope="module")
def fitted(climate):
    """A segmentation module fitted for a few steps, and its checkpoint path."""
    L.seed_everything(0)
    datamodule = _datamodule(climate)
    module = SegmentationModule(UNET, scheduler=ONECYCLE)
    trainer = _trainer(climate / "fit", max_steps=6)
    trainer.fit(module, datamodule=datamodule)
    path = climate / "fitted.ckpt"
    trainer.save_checkpoint(path)
    return module, trainer, datamodule, path


def _primitive(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _primitive(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(map(_primitive, value))
    return value is None or isinstance(value, bool | int | float | str)


def test_checkpoint_loads_weights_only_and_carries_statistics(fitted):
    module, _, datamodule, path = fitted
    checkpoint = torch.load(path, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert _primitive(hparams)
    stats = hparams["data_stats"]
    assert stats == datamodule.normalization.to_dict()
    assert len(stats["mean"]) == 4 and stats["variables"] == ["TMQ", "U850", "V850", "PSL"]

    loaded = load_module(str(path))
    assert isinstance(loaded, SegmentationModule)
    assert loaded.data_stats == stats
    for key, value in module.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[key]), key
    expected = inverse_frequency_weights(torch.tensor(stats["class_frequencies"]))
    assert torch.allclose(loaded.class_weights, expected)
    assert loaded.class_weights[1] > loaded.class_weights[0]  # rare cyclones weigh more


def test_scheduler_horizon_comes_from_the_trainer(fitted):
    _, trainer, _, _ = fitted
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == trainer.estimated_stepping_batches == 6
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_test_metrics_and_confusion(fitted, climate):
    module, _, datamodule, _ = fitted
    results = _trainer(climate / "test").test(module, datamodule=datamodule, verbose=False)[0]
    for key in ("test/mAP", "test/mean_acc", "test/mean_iou", "test/acc_TC", "test/ap_AR", "test/iou_BG"):
        assert 0.0 <= results[key] <= 1.0, key
    vertices = len(datamodule.test_set) * IcoGrid(2).num_vertices
    assert int(module.test_confusion.sum()) == vertices


def test_compiled_and_uncompiled_checkpoints_load_into_each_other(fitted, tmp_path):
    path = fitted[-1]
    x = torch.randn(2, 4, IcoGrid(2).num_vertices)
    reference = load_module(str(path)).eval()(x)

    checkpoint = torch.load(path, weights_only=True)
    wrapped = {k.replace("net.", "net._orig_mod.", 1): v for k, v in checkpoint["state_dict"].items()}
    checkpoint["state_dict"] = wrapped
    torch.save(checkpoint, tmp_path / "prefixed.ckpt")
    from_compiled = load_module(str(tmp_path / "prefixed.ckpt")).eval()
    assert torch.equal(from_compiled(x), reference)

    wrapper = SegmentationModule(UNET)
    wrapper.net = torch.compile(wrapper.net, backend="eager")  # keys now carry _orig_mod.
    assert all("_orig_mod" in k for k in wrapper.state_dict() if k.startswith("net."))
    state = strip_compile_prefix(torch.load(path, weights_only=True)["state_dict"], set(wrapper.state_dict()))
    wrapper.load_state_dict(state)
    assert torch.equal(wrapper.net._orig_mod.eval()(x), reference)


@pytest.mark.slow  # dynamo tracing of the U-Net takes about a minute on 2 CPU cores
def test_compile_option_trains_and_keeps_plain_keys(climate):
    module = SegmentationModule(UNET, compile="eager")
    assert not any("_orig_mod" in k for k in module.state_dict())
    trainer = _trainer(climate / "compiled", max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_datamodule(climate))
    assert trainer.global_step == 2


@pytest.mark.parametrize("loss", LOSSES)
def test_losses_are_finite_and_trainable(loss):
    logits = torch.randn(2, 3, 42, requires_grad=True)
    target = torch.randint(0, 3, (2, 42))
    value = segmentation_loss(loss, logits, target, torch.tensor([0.5, 3.0, 2.0]))
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0
    perfect = segmentation_loss(loss, 50 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float(),
                                target, torch.ones(3))
    assert perfect < value


def test_weighted_ce_needs_class_frequencies():
    class NoStats(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(2, 4, 162), torch.zeros(2, 162, dtype=torch.long)))

    with pytest.raises(ValueError, match="class_frequencies"):
        _trainer(None, max_steps=1).fit(SegmentationModule(UNET), datamodule=NoStats())
    with pytest.raises(ValueError, match="unknown loss"):
        SegmentationModule(UNET, loss="focal")


class _TwoTestLoaders(L.LightningDataModule):
    test_names = ("N", "R")

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 1, IcoGrid(2).num_vertices, generator=gen)
        self.y = torch.randint(0, 4, (16,), generator=gen)

    def _loader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4)

    def train_dataloader(self):
        return self._loader()

    val_dataloader = train_dataloader

    def test_dataloader(self):
        return [self._loader(), self._loader()]


def test_classification_module_scores_named_test_loaders(tmp_path):
    module = ClassificationModule(CLASSIFIER, num_classes=4)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(module, datamodule=_TwoTestLoaders())
    assert "val/acc" in trainer.callback_metrics
    results = trainer.test(module, datamodule=_TwoTestLoaders(), verbose=False)
    merged = {k: v for d in results for k, v in d.items()}
    assert {"test/acc_N", "test/acc_R", "test/balanced_acc_N", "test/loss_R"} <= set(merged)
    assert merged["test/acc_N"] == pytest.approx(merged["test/acc_R"])  # the same data twice
    probs = trainer.predict(module, dataloaders=DataLoader(torch.randn(3, 1, IcoGrid(2).num_vertices)))
    assert np.allclose(probs[0].sum(1).numpy(), 1.0, atol=1e-5)
