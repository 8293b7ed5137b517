"""Climate segmentation metrics over a whole evaluation set (DESIGN §6).

Everything is accumulated into fixed-size integer count tables — a K×K confusion matrix and,
per class, histograms of the softmax score of positive and negative vertices — so memory does
not grow with the test set and DDP sync is an exact sum of counts (`dist_reduce_fx="sum"`).

* accuracy of class k = recall = TP_k / (vertices labelled k); mean accuracy over all classes.
* AP of class k from the score histograms: thresholds are the bin edges b/B (B ≥ 1000), and
  AP = Σ_b (R_b − R_{b+1}) · P_b with precision P_b and recall R_b of "score ≥ b/B". This is
  exactly sklearn's ``average_precision_score`` of the scores quantised to floor(p·B)/B.
  mAP = mean AP over the event classes (TC, AR), the DeepSphere / icosahedral-CNN definition.
* IoU of class k = TP / (TP + FP + FN) from the global confusion matrix; mean IoU over all
  classes (ClimateNet's definition).

Weighting (``weighting=``): "vertex" counts every vertex once; "area" weights each vertex by its
spherical Voronoi cell (`IcoGrid.areas`, as a fraction of the sphere), so accuracy is the fraction
of the class's surface found and IoU is a ratio of surface areas. The vertex-count tables are
always kept: the keys without suffix follow the chosen weighting, ``<key>_vertex`` is always the
vertex-count value and, with area weighting, ``<key>_area`` the area-weighted one. The area tables
are float64 sums, synced like the counts.

A class with no vertex in the evaluated labels has no accuracy and no AP (NaN per class). It is
left out of `mean_acc`, `mAP` and (unless it was predicted, which makes its IoU 0) `mean_iou`;
compute()'s `present` says which classes were. A mean over no class at all is 0, so the means are never NaN and
checkpoint selection keeps comparing epochs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from icolightning.classes import CLIMATE_CLASSES, EVENT_CLASSES
from icolightning.grid import IcoGrid, level_of

WEIGHTINGS = ("area", "vertex")


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int, weights: Tensor | None = None) -> Tensor:
    """[K, K] counts (int64, or float64 sums of ``weights``), rows = true class, columns = predicted."""
    flat = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return _bincount(flat, num_classes**2, weights).reshape(num_classes, num_classes)


def _bincount(index: Tensor, size: int, weights: Tensor | None) -> Tensor:
    """Integer bincount, or a weighted one by index_add_ (deterministic on CUDA, unlike bincount's)."""
    if weights is None:
        return torch.bincount(index, minlength=size)
    return torch.zeros(size, dtype=torch.float64, device=index.device).index_add_(0, index, weights)


@functools.lru_cache(maxsize=16)
def _area_fractions(num_vertices: int) -> Tensor:
    areas = torch.from_numpy(IcoGrid(level_of(num_vertices)).areas)
    return areas / areas.sum()


def area_weights(num_vertices: int, device: torch.device | str = "cpu") -> Tensor:
    """[N] float64 Voronoi-cell areas of the level with N vertices, as fractions of the sphere."""
    try:
        return _area_fractions(num_vertices).to(device)
    except ValueError as err:
        raise ValueError(f"weighting='area' needs signals on icosahedral vertices: {err}") from None


def average_precision_from_histograms(pos: Tensor, neg: Tensor) -> Tensor:
    """AP per row of score histograms [K, B] (bin b holds scores in [b/B, (b+1)/B)).

    Sweeping the threshold down from the top bin, precision and recall of "score ≥ b/B" are
    cumulative sums; AP is the recall-step-weighted sum of precisions. NaN for a class with
    no positive vertex.
    """
    pos = pos.double()
    tp = pos.flip(-1).cumsum(-1)
    fp = neg.double().flip(-1).cumsum(-1)
    total = tp[..., -1:]
    recall = tp / total
    scored = tp + fp  # counts or area sums; 0 only above every score, where precision is taken as 0
    precision = torch.where(scored > 0, tp / scored.clamp_min(torch.finfo(scored.dtype).tiny), 0.0)
    step = torch.diff(recall, dim=-1, prepend=torch.zeros_like(recall[..., :1]))
    return (step * precision).sum(-1)


def mean_where(values: Tensor, defined: Tensor) -> Tensor:
    """Mean of `values` where `defined` holds; 0 when it holds nowhere (never NaN)."""
    return values[defined].mean() if bool(defined.any()) else values.new_zeros(())


class ClimateMetrics(Metric):
    """Per-class accuracy, AP and IoU plus their means, from probabilities [B, K, N] and labels [B, N].

    ``compute()`` returns a dict of scalars: ``acc_<c>``, ``ap_<c>``, ``iou_<c>`` for every class
    name and ``accuracy`` (overall), ``mean_acc``, ``mAP``, ``mean_iou`` in the chosen weighting, the
    same with ``_vertex`` (and, for ``weighting="area"``, ``_area``) appended; plus ``confusion``,
    the synced [K, K] vertex-count matrix (rows = truth), and ``present``, [K] booleans: which
    classes occur in the labels (the others are left out of the means); neither is a scalar.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        class_names: Sequence[str] = CLIMATE_CLASSES,
        event_classes: Sequence[str] = EVENT_CLASSES,
        ap_bins: int = 1000,
        weighting: str = "vertex",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if ap_bins < 1000:
            raise ValueError(f"ap_bins must be ≥ 1000 for a faithful AP, got {ap_bins}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"metrics weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        missing = set(event_classes) - set(class_names)
        if missing:
            raise ValueError(f"event classes {sorted(missing)} are not among {list(class_names)}")
        self.class_names = tuple(class_names)
        self.event_index = [self.class_names.index(c) for c in event_classes]
        self.ap_bins = int(ap_bins)
        self.weighting = weighting
        k = len(self.class_names)
        self.add_state("confmat", torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("pos_hist", torch.zeros(k, self.ap_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("neg_hist", torch.zeros(k, self.ap_bins, dtype=torch.long), dist_reduce_fx="sum")
        if weighting == "area":
            for name, shape in (("confmat_area", (k, k)), ("pos_hist_area", (k, self.ap_bins)),
                                ("neg_hist_area", (k, self.ap_bins))):
                self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` [B, K, N] softmax scores, ``target`` [B, N] class ids."""
        k, nbins = self.num_classes, self.ap_bins
        if probs.shape[1] != k or probs.shape[0] != target.shape[0] or probs.shape[2:] != target.shape[1:]:
            raise ValueError(f"probs {tuple(probs.shape)} / target {tuple(target.shape)} mismatch (K={k})")
        scores = probs.detach().movedim(1, -1).reshape(-1, k)
        labels = target.reshape(-1).long()
        pred = scores.argmax(-1)
        bins = (scores.float() * nbins).long().clamp_(0, nbins - 1)
        cell = bins + torch.arange(k, device=bins.device) * nbins
        positive = labels[:, None] == torch.arange(k, device=labels.device)
        self.confmat += confusion_counts(pred, labels, k)
        self.pos_hist += torch.bincount(cell[positive], minlength=k * nbins).reshape(k, nbins)
        self.neg_hist += torch.bincount(cell[~positive], minlength=k * nbins).reshape(k, nbins)
        if self.weighting == "area":
            weight = area_weights(target.shape[-1], labels.device).expand(target.shape).reshape(-1)
            per_cell = weight[:, None].expand(-1, k)
            self.confmat_area += confusion_counts(pred, labels, k, weight)
            self.pos_hist_area += _bincount(cell[positive], k * nbins, per_cell[positive]).reshape(k, nbins)
            self.neg_hist_area += _bincount(cell[~positive], k * nbins, per_cell[~positive]).reshape(k, nbins)

    def _scores(self, confmat: Tensor, pos_hist: Tensor, neg_hist: Tensor) -> dict[str, Tensor]:
        """The scalar scores of one pair of tables (counts or area sums)."""
        cm = confmat.double()
        tp = cm.diagonal()
        acc = tp / cm.sum(1)
        iou = tp / (cm.sum(1) + cm.sum(0) - tp)
        ap = average_precision_from_histograms(pos_hist, neg_hist)
        out: dict[str, Tensor] = {"accuracy": tp.sum() / cm.sum()}
        for i, name in enumerate(self.class_names):
            out[f"acc_{name}"] = acc[i]
            out[f"ap_{name}"] = ap[i]
            out[f"iou_{name}"] = iou[i]
        present = cm.sum(1) > 0
        out["mean_acc"] = mean_where(acc, present)
        out["mAP"] = mean_where(ap[self.event_index], present[self.event_index])
        out["mean_iou"] = mean_where(iou, (cm.sum(1) + cm.sum(0)) > 0)
        return out

    def compute(self) -> dict[str, Tensor]:
        by_weighting = {"vertex": self._scores(self.confmat, self.pos_hist, self.neg_hist)}
        if self.weighting == "area":
            by_weighting["area"] = self._scores(self.confmat_area, self.pos_hist_area, self.neg_hist_area)
        out = dict(by_weighting[self.weighting])
        for weighting, scores in by_weighting.items():
            out.update({f"{key}_{weighting}": value for key, value in scores.items()})
        out["confusion"] = self.confmat.clone()
        out["present"] = self.confmat.sum(1) > 0
        return out
