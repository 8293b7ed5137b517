"""Climate metrics against brute-force sklearn references, and 1-process == 2-process (gloo)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_runs import free_port
from sklearn.metrics import average_precision_score, confusion_matrix

from icolightning.grid import IcoGrid
from icolightning.metrics.segmentation import ClimateMetrics


def _fake_batches(seed: int = 0, batches: int = 5, batch: int = 3, n: int = 162, k: int = 3):
    """Imbalanced labels with informative, noisy softmax scores, as a trained model would give."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        target = torch.multinomial(torch.tensor([0.85, 0.05, 0.10]), batch * n, replacement=True,
                                   generator=gen).reshape(batch, n)
        logits = torch.randn(batch, k, n, generator=gen, dtype=torch.float64)
        logits += 2.0 * torch.nn.functional.one_hot(target, k).movedim(-1, 1)
        out.append((logits.softmax(1), target))
    return out


def _flatten(batches):
    probs = torch.cat([p.movedim(1, -1).reshape(-1, p.shape[1]) for p, _ in batches]).numpy()
    target = torch.cat([t.reshape(-1) for _, t in batches]).numpy()
    return probs, target


def _run(batches, **kwargs):
    metric = ClimateMetrics(**kwargs)
    for probs, target in batches:
        metric.update(probs, target)
    return {k: v.item() if v.ndim == 0 else v.tolist() for k, v in metric.compute().items()}


def test_confusion_based_metrics_match_sklearn():
    batches = _fake_batches()
    probs, target = _flatten(batches)
    got = _run(batches)
    cm = confusion_matrix(target, probs.argmax(1), labels=[0, 1, 2])
    assert got["confusion"] == cm.tolist()
    cm = cm.astype(float)
    recall = np.diag(cm) / cm.sum(1)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    for i, name in enumerate(["BG", "TC", "AR"]):
        assert got[f"acc_{name}"] == pytest.approx(recall[i], abs=1e-12)
        assert got[f"iou_{name}"] == pytest.approx(iou[i], abs=1e-12)
    assert got["mean_acc"] == pytest.approx(recall.mean(), abs=1e-12)
    assert got["mean_iou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert got["accuracy"] == pytest.approx((probs.argmax(1) == target).mean(), abs=1e-12)
    assert 0.3 < got["mean_iou"] < 0.95  # the fake scores are informative but imperfect


@pytest.mark.parametrize("bins", [1000, 4096])
def test_binned_ap_is_exact_ap_of_quantised_scores(bins):
    batches = _fake_batches(seed=1)
    probs, target = _flatten(batches)
    got = _run(batches, ap_bins=bins)
    quantised = np.clip(np.floor(probs.astype(np.float32) * bins), 0, bins - 1) / bins
    aps = []
    for i, name in enumerate(["BG", "TC", "AR"]):
        exact_quantised = average_precision_score(target == i, quantised[:, i])
        exact_raw = average_precision_score(target == i, probs[:, i])
        assert got[f"ap_{name}"] == pytest.approx(exact_quantised, abs=1e-12)
        assert got[f"ap_{name}"] == pytest.approx(exact_raw, abs=5e-3)
        aps.append(exact_quantised)
    assert got["mAP"] == pytest.approx((aps[1] + aps[2]) / 2, abs=1e-12)


def test_perfect_and_absent_classes():
    target = torch.tensor([[0, 0, 1, 2, 2, 0]])
    probs = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double()
    got = _run([(probs, target)])
    assert all(got[k] == 1.0 for k in ("mean_acc", "mAP", "mean_iou", "accuracy"))
    got = _run([(probs[..., [0, 1, 5]], target[:, [0, 1, 5]])])
    assert np.isnan(got["acc_AR"]) and np.isnan(got["ap_AR"])


def test_absent_classes_are_left_out_of_the_means_never_nan():
    """A validation split without AR: the means average the classes present, and say which are not."""
    batches = _fake_batches(seed=4)
    kept = [(p, t.masked_fill(t == 2, 0)) for p, t in batches]  # AR vertices relabelled BG
    probs, target = _flatten(kept)
    got = _run(kept)
    assert got["present"] == [True, True, False]
    assert np.isnan(got["acc_AR"]) and np.isnan(got["ap_AR"])
    assert got["mean_acc"] == pytest.approx((got["acc_BG"] + got["acc_TC"]) / 2, abs=1e-12)
    assert got["mAP"] == pytest.approx(average_precision_score(target == 1, probs[:, 1]), abs=5e-3)
    assert got["mAP"] == pytest.approx(got["ap_TC"], abs=1e-12)
    # AR is still predicted somewhere, so its IoU is a defined 0 and counts in the mean IoU.
    assert got["iou_AR"] == 0.0
    assert got["mean_iou"] == pytest.approx((got["iou_BG"] + got["iou_TC"]) / 3, abs=1e-12)
    only_bg = _run([(torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]]), torch.zeros(1, 2).long())])
    assert only_bg["mAP"] == 0.0 and only_bg["mean_acc"] == 1.0  # no event class at all: 0, not NaN
    assert only_bg["mean_iou"] == 1.0


def test_memory_is_independent_of_dataset_size():
    metric = ClimateMetrics()
    sizes = []
    for probs, target in _fake_batches(batches=2) + _fake_batches(seed=3, batches=6):
        metric.update(probs, target)
        sizes.append(sum(s.numel() for s in (metric.confmat, metric.pos_hist, metric.neg_hist)))
    assert len(set(sizes)) == 1


def test_rejects_too_few_bins_and_bad_shapes():
    with pytest.raises(ValueError):
        ClimateMetrics(ap_bins=100)
    with pytest.raises(ValueError):
        ClimateMetrics().update(torch.rand(2, 4, 10), torch.zeros(2, 10, dtype=torch.long))


def test_area_weighting_on_hand_made_labels():
    """Level 1: TC on the 12 small pentagon cells, one hexagon wrongly called TC. Counting vertices,
    TC's IoU is 12/13; weighting by area it is A12 / (A12 + a), with the cells' true areas."""
    grid = IcoGrid(1)
    share = grid.areas / grid.areas.sum()
    target = torch.zeros(1, grid.num_vertices, dtype=torch.long)
    target[0, grid.corners] = 1
    wrong = int(np.flatnonzero(grid.degree == 6)[0])
    pred = target.clone()
    pred[0, wrong] = 1
    probs = torch.nn.functional.one_hot(pred, 3).movedim(-1, 1).double()
    got = _run([(probs, target)], weighting="area")
    corners, extra = share[grid.corners].sum(), share[wrong]
    assert corners < 12 / grid.num_vertices  # pentagons are smaller than the average cell
    assert got["iou_TC_vertex"] == pytest.approx(12 / 13, abs=1e-12)
    assert got["iou_TC_area"] == pytest.approx(corners / (corners + extra), abs=1e-12)
    assert got["iou_TC"] == got["iou_TC_area"] != pytest.approx(got["iou_TC_vertex"], abs=1e-3)
    assert got["acc_BG_vertex"] == pytest.approx(29 / 30, abs=1e-12)
    assert got["acc_BG_area"] == pytest.approx(1 - extra / (1 - corners), abs=1e-12)
    assert got["accuracy_area"] == pytest.approx(1 - extra, abs=1e-12)
    assert got["ap_TC_area"] == pytest.approx(corners / (corners + extra), abs=1e-12)  # all scored 1
    assert got["ap_TC_vertex"] == pytest.approx(12 / 13, abs=1e-12)
    vertex_only = _run([(probs, target)], weighting="vertex")
    assert vertex_only["iou_TC"] == vertex_only["iou_TC_vertex"] and "iou_TC_area" not in vertex_only


def test_area_weighting_matches_sklearn_sample_weights():
    batches = _fake_batches(seed=5)  # n = 162: level 2
    probs, target = _flatten(batches)
    weight = np.tile(IcoGrid(2).areas / IcoGrid(2).areas.sum(), len(target) // 162)
    got = _run(batches, weighting="area")
    cm = confusion_matrix(target, probs.argmax(1), labels=[0, 1, 2], sample_weight=weight)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    quantised = np.clip(np.floor(probs.astype(np.float32) * 1000), 0, 999) / 1000
    for i, name in enumerate(["BG", "TC", "AR"]):
        assert got[f"acc_{name}"] == pytest.approx(cm[i, i] / cm[i].sum(), abs=1e-12)
        assert got[f"iou_{name}"] == pytest.approx(iou[i], abs=1e-12)
        ap = average_precision_score(target == i, quantised[:, i], sample_weight=weight)
        assert got[f"ap_{name}"] == pytest.approx(ap, abs=1e-12)
    assert got["mean_iou"] == pytest.approx(iou.mean(), abs=1e-12)
    with pytest.raises(ValueError, match="icosahedral"):
        _run([(torch.rand(1, 3, 10), torch.zeros(1, 10, dtype=torch.long))], weighting="area")
    with pytest.raises(ValueError, match="weighting"):
        ClimateMetrics(weighting="cells")


def _rank_worker(rank: int, world: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batches = _fake_batches(seed=7, batches=6)
        metric = ClimateMetrics(weighting="area")
        for probs, target in batches[rank::world]:
            metric.update(probs, target)
        values = {k: v.item() if v.ndim == 0 else v.tolist() for k, v in metric.compute().items()}
        if rank == 0:
            torch.save(values, result_path)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    result = tmp_path / "ddp.pt"
    mp.spawn(_rank_worker, args=(2, free_port(), str(result)), nprocs=2, join=True)
    synced = torch.load(result, weights_only=True)
    single = _run(_fake_batches(seed=7, batches=6), weighting="area")
    assert synced.keys() == single.keys() and "mean_iou_area" in single
    assert synced.pop("confusion") == single.pop("confusion")
    for key, value in single.items():
        assert synced[key] == pytest.approx(value, abs=1e-12), key
