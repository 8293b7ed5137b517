"""Normalisation and pointwise layers that keep equivariance.

Statistics are shared over the orientation channels and over all vertices (poles included),
with one affine weight and bias per channel: any of the 60 rotations only permutes what is
averaged, so the layers commute with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
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


def _all_reduce_sum(t: torch.Tensor, group: object | None) -> torch.Tensor:
    """Differentiable sum over the ranks: its backward all-reduces the gradients the same way."""
    return dist_nn.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


def distributed_world(group: object | None = None) -> int:
    """Number of ranks in the process group, 1 when torch.distributed is not running."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class IcoBatchNorm(nn.Module):
    """Batch norm with statistics per channel over batch, orientations and all vertices.

    With ``sync`` set (Lightning's ``sync_batchnorm=True`` sets it, see `set_batchnorm_sync`) the
    statistics are summed over every rank of the process group, so N processes with B/N samples
    each normalise exactly like one process with B samples, over gloo (CPU) or NCCL (GPU) alike.
    It is deliberately not a ``_BatchNorm`` subclass: torch's ``SyncBatchNorm`` conversion would
    replace it by a layer that cannot read an `IcoSignal` and refuses CPU tensors.

    Parameters and buffers carry ``BatchNorm1d``'s names, so checkpoints keep their keys. The
    running variance is unbiased (n/(n-1)), as in torch.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, sync: bool = False) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.sync = sync
        self.process_group: object | None = None
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, sync={self.sync}")

    def _channel_sums(self, x: IcoSignal, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Per-channel Σ fn(x) over batch, orientations, charts and poles, in float32 or wider."""
        dtype = torch.promote_types(x.charts.dtype, torch.float32)
        charts, poles = fn(x.charts.to(dtype)), fn(x.poles.to(dtype))
        return charts.sum((0, 2, 3, 4, 5)) + poles.sum((0, 2, 3))

    def _batch_statistics(self, x: IcoSignal) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean and biased variance (two passes, so no cancellation), and the count behind them."""
        b, r = x.charts.shape[0], x.charts.shape[2]
        count = b * r * (x.charts[0, 0, 0].numel() + x.poles.shape[-1])
        group = self.process_group
        syncing = self.sync and distributed_world(group) > 1
        total = self._channel_sums(x, lambda t: t)
        if syncing:
            count_t = torch.tensor([float(count)], device=total.device, dtype=total.dtype)
            total, count_t = _all_reduce_sum(total, group), dist_nn.all_reduce(count_t, group=group)
            count = int(count_t.item())
        mean = total / count
        centred = self._channel_sums(x, lambda t: (t - mean.view(1, -1, *([1] * (t.dim() - 2)))).square())
        if syncing:
            centred = _all_reduce_sum(centred, group)
        return mean, centred / count, count

    def forward(self, x: IcoSignal) -> IcoSignal:
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            mean, var, count = self._batch_statistics(x)
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    unbiased = var * (count / max(count - 1, 1))
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        dtype = x.charts.dtype

        def affine(t: torch.Tensor) -> torch.Tensor:
            shape = (1, -1, *([1] * (t.dim() - 2)))
            return torch.addcmul(shift.to(dtype).view(shape), t, scale.to(dtype).view(shape))

        return x.map(affine)


def set_batchnorm_sync(module: nn.Module, sync: bool, process_group: object | None = None) -> int:
    """Switch cross-rank statistics on or off in every `IcoBatchNorm` of ``module``; returns how many."""
    layers = [m for m in module.modules() if isinstance(m, IcoBatchNorm)]
    for layer in layers:
        layer.sync, layer.process_group = sync, process_group
    return len(layers)


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
