"""Normalisation and pointwise layers that keep equivariance.

Statistics are shared over the orientation channels and over all vertices (poles included),
with one affine weight and bias per channel: any of the 60 rotations only permutes what is
averaged, so the layers commute with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icolightning.nn.signal import IcoSignal


def _flat(x: IcoSignal) -> torch.Tensor:
    """[B, C, R·N] with every orientation of every vertex."""
    b, c = x.charts.shape[:2]
    return torch.cat([x.charts.reshape(b, c, -1), x.poles.reshape(b, c, -1)], dim=-1)


def _unflat(flat: torch.Tensor, like: IcoSignal) -> IcoSignal:
    n_chart = like.charts[0, 0].numel()
    charts = flat[..., :n_chart].reshape(flat.shape[0], flat.shape[1], *like.charts.shape[2:])
    return IcoSignal(charts, flat[..., n_chart:].reshape(flat.shape[0], flat.shape[1], *like.poles.shape[2:]))


class IcoBatchNorm(nn.BatchNorm1d):
    """BatchNorm with statistics per channel over batch, orientations and vertices."""

    def forward(self, x: IcoSignal) -> IcoSignal:
        return _unflat(super().forward(_flat(x)), x)


class IcoLayerNorm(nn.Module):
    """Per-sample normalisation over channels, orientations and vertices; per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def forward(self, x: IcoSignal) -> IcoSignal:
        flat = _flat(x)
        normed = F.layer_norm(flat, flat.shape[1:], eps=self.eps)
        if self.weight is not None:
            normed = normed * self.weight[:, None] + self.bias[:, None]
        return _unflat(normed, x)


class IcoPointwise(nn.Module):
    """Any pointwise module (ReLU, GELU, ...) applied to every channel of charts and poles.

    Acting on each orientation channel separately commutes with their cyclic shifts, so any
    pointwise nonlinearity keeps regular fields regular.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: IcoSignal) -> IcoSignal:
        return x.map(self.module)


class IcoDropout(nn.Module):
    """Drops whole channels per sample (every orientation and vertex at once), so a dropped
    field stays a field; identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: IcoSignal) -> IcoSignal:
        if not self.training or self.p == 0.0:
            return x
        b, c = x.charts.shape[:2]
        keep = torch.bernoulli(x.charts.new_full((b, c), 1.0 - self.p)) / (1.0 - self.p)
        return IcoSignal(x.charts * keep.view(b, c, 1, 1, 1, 1), x.poles * keep.view(b, c, 1, 1))
