"""Segmentation losses on vertex logits [B, K, N] and labels [B, N]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def soft_jaccard_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 − mean over classes of the soft IoU (ClimateNet's Jaccard loss)."""
    inter, p, t = _soft_overlap(logits, target)
    return 1.0 - ((inter + smooth) / (p + t - inter + smooth)).mean()


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 − mean over classes of the soft Dice coefficient."""
    inter, p, t = _soft_overlap(logits, target)
    return 1.0 - ((2 * inter + smooth) / (p + t + smooth)).mean()


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
