"""Exact distributed evaluation, piece by piece: the unpadded sampler, the split-level segmentation
loss, and a spherical-MNIST classifier validated and tested by 2 Lightning DDP ranks over gloo
(odd split sizes) against one process."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from cli_runs import free_port

from datamodules import SphericalMNISTDataModule
from datamodules.samplers import UnpaddedDistributedSampler, evaluation_sampler
from icolightning.lightning import ClassificationModule
from icolightning.lightning.losses import LOSSES, SplitLoss, segmentation_loss


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("size", range(1, 8))
def test_unpadded_sampler_gives_every_index_to_exactly_one_rank(size, world):
    shards = [list(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) for r in range(world)] == \
        [len(shard) for shard in shards]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_evaluation_sampler_only_under_ddp_and_refuses_empty_ranks():
    assert evaluation_sampler(range(5)) is None  # no process group: a plain sequential loader
    assert evaluation_sampler(range(5), rank=0, world=1) is None
    assert list(evaluation_sampler(range(5), rank=1, world=2)) == [1, 3]
    with pytest.raises(ValueError, match="validation split has 2 samples, fewer than the 3 DDP ranks"):
        evaluation_sampler(range(2), "validation", rank=0, world=3)


@pytest.mark.parametrize("loss", LOSSES)
def test_split_loss_does_not_depend_on_batching_or_ranks(loss):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 40, generator=generator) * 2
    target = torch.randint(0, 3, (5, 40), generator=generator)
    weights = torch.tensor([0.4, 3.0, 1.7])
    whole = SplitLoss(loss, 3)
    whole.update(logits, target, weights)
    expected = segmentation_loss(loss, logits, target, weights).double()
    torch.testing.assert_close(whole.compute(), expected, rtol=1e-6, atol=0)
    ranks = [SplitLoss(loss, 3), SplitLoss(loss, 3)]  # rank 0: samples 0, 2, 4 in two batches; rank 1: 1, 3
    for rank, batches in zip(ranks, [[[0, 2], [4]], [[1, 3]]], strict=True):
        for batch in batches:
            rank.update(logits[batch], target[batch], weights)
    ranks[0].merge_state(ranks[1])  # what the DDP sync (sum of the states) does
    torch.testing.assert_close(ranks[0].compute(), whole.compute(), rtol=1e-6, atol=0)  # float32 batch sums
    batch_mean = sum(segmentation_loss(loss, logits[b], target[b], weights) * len(b)
                     for b in [[0, 2], [4], [1, 3]]) / 5
    if loss != "ce":  # a batch-size-weighted mean of batch losses is not the split's loss
        assert abs(batch_mean - expected) > 1e-4


# ------------------------------------------------------------------ classification on 2 DDP ranks
def _evaluate_classifier(devices: int) -> dict[str, float]:
    """Validate and test a small untrained classifier (5 validation digits, 7 test digits, 2 modes)."""
    L.seed_everything(0)
    data = SphericalMNISTDataModule(level=2, test_mode=["N", "I"], limit_train=10, val_fraction=0.5, limit_test=7,
                                    batch_size=2, eval_batch_size=2)
    net = {"_target_": "icolightning.models.IcoClassifier", "in_channels": 1, "num_classes": 10, "level": 2,
           "widths": [4, 8], "hidden": 8}
    model = ClassificationModule(net, num_classes=10)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.validate(model, data, verbose=False) + trainer.test(model, data, verbose=False)
    return {key: float(value) for result in results for key, value in result.items()}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank started from outside, as torchrun or srun would (Lightning then launches nothing)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", PYTHONWARNINGS="ignore")
    torch.set_num_threads(1)
    results = _evaluate_classifier(world)
    if rank == 0:
        torch.save(results, out)


def test_classifier_metrics_on_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.start_processes(_rank, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn")
    distributed = torch.load(out, weights_only=True)
    single = _evaluate_classifier(1)
    assert set(single) == {"val/loss", "val/acc", *(f"test/{m}_{mode}" for m in ("loss", "acc", "balanced_acc")
                                                     for mode in "NI")}
    assert distributed.keys() == single.keys()
    for key, value in single.items():
        assert distributed[key] == pytest.approx(value, abs=1e-6), key
