"""Segmentation losses on vertex logits [B, K, N] and labels [B, N], per batch for training and
over a whole split (`SplitLoss`) for validation and test."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

LOSSES = ("ce", "weighted_ce", "jaccard", "dice")


def inverse_frequency_weights(frequencies: Tensor, power: float = 1.0) -> Tensor:
    """w_k ∝ f_k^(−power), scaled so that the frequency-weighted mean weight is 1.

    power=1 balances the classes fully (what balanced accuracy rewards); 0.5 is a milder
    choice. Classes absent from the training split get the largest present weight.
    """
    freq = frequencies.double() / frequencies.double().sum()
    present = freq > 0
    weights = torch.zeros_like(freq)
    weights[present] = freq[present] ** (-power)
    weights[~present] = weights[present].max()
    return (weights / (freq * weights).sum()).float()


def _soft_overlap(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class Σ p·t, Σ p and Σ t over batch and vertices, from softmax probabilities."""
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = [0, *range(2, probs.ndim)]
    return (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)


def overlap_loss(name: str, inter: Tensor, p: Tensor, t: Tensor, smooth: float = 1.0) -> Tensor:
    """"jaccard": 1 − mean soft IoU (ClimateNet's Jaccard loss); "dice": 1 − mean soft Dice."""
    if name == "jaccard":
        return 1.0 - ((inter + smooth) / (p + t - inter + smooth)).mean()
    return 1.0 - ((2 * inter + smooth) / (p + t + smooth)).mean()


def soft_jaccard_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    return overlap_loss("jaccard", *_soft_overlap(logits, target), smooth)


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    return overlap_loss("dice", *_soft_overlap(logits, target), smooth)


def segmentation_loss(name: str, logits: Tensor, target: Tensor, class_weights: Tensor | None = None
                      ) -> Tensor:
    """The loss called `name` (one of LOSSES); `class_weights` is used by weighted_ce only."""
    if name == "ce":
        return F.cross_entropy(logits.float(), target)
    if name == "weighted_ce":
        return F.cross_entropy(logits.float(), target, weight=class_weights)
    if name == "jaccard":
        return soft_jaccard_loss(logits, target)
    if name == "dice":
        return soft_dice_loss(logits, target)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")


class SplitLoss(Metric):
    """`segmentation_loss` over a whole evaluation split, independent of how it is batched.

    A mean of per-batch losses depends on the batch composition (weighted cross-entropy divides
    by each batch's own weight sum; Jaccard and Dice are ratios), and so on the number of DDP
    ranks. This keeps the sums behind the loss instead, in float64, synced by summation: the
    cross-entropies divide Σ w·CE by Σ w over every vertex of the split, and Jaccard and Dice use
    the soft overlaps summed over the split. N processes then give the one-process value.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, name: str, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
        self.name = name
        self.add_state("weighted_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("overlaps", torch.zeros(3, num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> None:
        if self.name in ("jaccard", "dice"):
            self.overlaps += torch.stack(_soft_overlap(logits.detach(), target)).double()
            return
        weight = class_weights if self.name == "weighted_ce" else None
        per_vertex = F.cross_entropy(logits.detach().float(), target, weight=weight, reduction="none")
        self.weighted_sum += per_vertex.double().sum()
        self.weight_sum += weight[target].double().sum() if weight is not None else target.numel()

    def compute(self) -> Tensor:
        if self.name in ("jaccard", "dice"):
            return overlap_loss(self.name, *self.overlaps)
        return self.weighted_sum / self.weight_sum
