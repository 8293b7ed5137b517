"""Normalisation and pointwise layers that keep equivariance.

Statistics are shared over the orientation channels and over all vertices (poles included),
with one affine weight and bias per channel: any of the 60 rotations only permutes what is
averaged, so the layers commute with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from icolightning.distributed import rank_and_world
from icolightning.nn.batch_stats import affine_of, batch_norm_grads, batch_statistics, columns, per_column
from icolightning.nn.fused import norm_relu_pad
from icolightning.nn.layout import charts_view, memory
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal


def _per_channel(x: IcoSignal, chart_fn: Callable[[torch.Tensor], torch.Tensor],
                 pole_fn: Callable[[torch.Tensor], torch.Tensor]) -> IcoSignal:
    """Apply per-channel maps to the charts in memory order ([..., C, R]) and to the poles ([B, C, R, 2])."""
    return IcoSignal(charts_view(chart_fn(memory(x.charts))), pole_fn(x.poles))


class IcoBatchNorm(nn.Module):
    """Batch norm with statistics per channel over batch, orientations and all vertices.

    With ``sync`` set (Lightning's ``sync_batchnorm=True`` sets it, see `set_batchnorm_sync`) the
    statistics are summed over every rank of the process group, so N processes with B/N samples
    each normalise exactly like one process with B samples, over gloo (CPU) or NCCL (GPU) alike.
    It is deliberately not a ``_BatchNorm`` subclass: torch's ``SyncBatchNorm`` conversion would
    replace it by a layer that cannot read an `IcoSignal` and refuses CPU tensors.

    Parameters and buffers carry ``BatchNorm1d``'s names, so checkpoints keep their keys. The
    running variance is unbiased (n/(n-1)), as in torch.

    ``relu`` applies a ReLU after the affine map. With ``pad_level`` (the level of the signals it
    normalises) the training-mode output is written straight into the interior of a gauge-padded
    buffer whose border is filled in the same step (`icolightning.nn.fused`): the next layer's
    `GaugePad` then has nothing left to copy. Its padding tables are non-persistent buffers.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, sync: bool = False, relu: bool = False,
                 pad_level: int | None = None) -> None:
        super().__init__()
        self.relu = relu
        self.pad = None if pad_level is None else GaugePad(pad_level)
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
                f"track_running_stats={self.track_running_stats}, sync={self.sync}, relu={self.relu}")

    def forward(self, x: IcoSignal) -> IcoSignal:
        if not (self.training or not self.track_running_stats):
            return self._rectified(self._with_running_stats(x))
        syncing = self.training and self.sync and rank_and_world(self.process_group, environment=False)[1] > 1
        tracking = self.training and self.track_running_stats
        if self.pad is not None and tracking and not syncing:  # the default in training: two operators
            charts = memory(x.charts)
            with torch.no_grad():
                stats = track_statistics(charts, x.poles, self.running_mean, self.running_var,
                                         self.num_batches_tracked, self.momentum, self.eps)
            count = (charts.numel() + x.poles.numel()) // self.num_features
            return norm_relu_pad(charts, x.poles, self.weight, self.bias, stats, (count, False, None), self.relu,
                                 self.pad)
        if self.pad is not None and not (syncing and torch.compiler.is_compiling()):
            charts = memory(x.charts)
            with torch.no_grad():
                mean, var, count = batch_statistics(charts, x.poles, syncing, self.process_group)
            stats = mean, torch.rsqrt(var + self.eps)
            out = norm_relu_pad(charts, x.poles, self.weight, self.bias, stats, (count, syncing, self.process_group),
                                self.relu, self.pad)
        else:
            charts, poles, mean, var, count = _BatchNormFunction.apply(
                memory(x.charts), x.poles, self.weight, self.bias, self.eps, syncing, self.process_group)
            out = self._rectified(IcoSignal(charts_view(charts), poles))
        if tracking:
            with torch.no_grad():
                _update_running(self.running_mean, self.running_var, self.num_batches_tracked, mean, var, count,
                                self.momentum)
        return out

    def _rectified(self, x: IcoSignal) -> IcoSignal:
        return x.map(torch.relu) if self.relu else x

    def _with_running_stats(self, x: IcoSignal) -> IcoSignal:
        scale = torch.rsqrt(self.running_var + self.eps)
        shift = -self.running_mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        scale, shift = scale.to(x.charts.dtype), shift.to(x.charts.dtype)
        return _per_channel(x, lambda t: torch.addcmul(shift.view(-1, 1), t, scale.view(-1, 1)),
                            lambda t: torch.addcmul(shift.view(-1, 1, 1), t, scale.view(-1, 1, 1)))


def _update_running(running_mean: torch.Tensor, running_var: torch.Tensor, num_batches_tracked: torch.Tensor,
                    mean: torch.Tensor, var: torch.Tensor, count: int, momentum: float) -> None:
    """The running statistics' update, in place (the running variance unbiased, n/(n-1), as torch's)."""
    num_batches_tracked += 1
    unbiased = var * (count / max(count - 1, 1))
    running_mean.lerp_(mean.to(running_mean.dtype), momentum)
    running_var.lerp_(unbiased.to(running_var.dtype), momentum)


# Statistics and running-statistics update in one operator: under torch.compile they would otherwise
# leave a small generated kernel per channel count.
@torch.library.custom_op("icolightning::track_statistics",
                         mutates_args=("running_mean", "running_var", "num_batches_tracked"))
def track_statistics(charts: torch.Tensor, poles: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                     num_batches_tracked: torch.Tensor, momentum: float, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and 1/sqrt(var + eps) of memory-order charts [..., C, R] and poles [B, C, R, 2]
    (`batch_statistics`, this process only), with the running statistics updated in place."""
    mean, var, count = batch_statistics(charts, poles, False, None)
    _update_running(running_mean, running_var, num_batches_tracked, mean, var, count, momentum)
    return mean, torch.rsqrt(var + eps)


@track_statistics.register_fake
def _(charts, poles, running_mean, running_var, num_batches_tracked, momentum, eps):
    acc = torch.promote_types(charts.dtype, torch.float32)
    c = charts.shape[-2]
    return charts.new_empty(c, dtype=acc), charts.new_empty(c, dtype=acc)


class _BatchNormFunction(torch.autograd.Function):
    """Batch norm over memory-order charts and poles with the closed-form backward.

    Statistics (and, in backward, the two per-channel gradient sums) are reduced in float32 or
    wider and summed over the ranks of `group` when `syncing`: each rank's input gradient is then
    exactly the one-process gradient of its samples; weight and bias gradients stay per rank (DDP
    sums them). Autograd through the statistics would cost several full-size passes more.
    """

    @staticmethod
    def forward(ctx, charts, poles, weight, bias, eps: float, syncing: bool, group):
        mean, var, count = batch_statistics(charts, poles, syncing, group)
        invstd = torch.rsqrt(var + eps)
        scale, shift = affine_of(mean, invstd, weight, bias)
        c = charts.shape[-2]
        scale_, shift_ = scale.to(charts.dtype), shift.to(charts.dtype)
        r = charts.shape[-1]
        out_charts = torch.addcmul(per_column(shift_, r), columns(charts), per_column(scale_, r)).view(charts.shape)
        out_poles = torch.addcmul(shift_.view(c, 1, 1), poles, scale_.view(c, 1, 1))
        ctx.save_for_backward(charts, poles, weight, mean, invstd)
        ctx.count, ctx.syncing, ctx.group = count, syncing, group
        ctx.mark_non_differentiable(mean, var)
        return out_charts, out_poles, mean, var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, g_charts, g_poles, _g_mean, _g_var, _g_count):
        charts, poles, weight, mean, invstd = ctx.saved_tensors
        return (*batch_norm_grads(ctx, g_charts, g_poles, charts, poles, weight, mean, invstd), None, None, None)


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
        dtype = torch.promote_types(x.charts.dtype, torch.float32)
        b = x.charts.shape[0]
        count = x.charts[0].numel() + x.poles[0].numel()

        def sample_sums(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1).sum(1)

        charts, poles = memory(x.charts).to(dtype), x.poles.to(dtype)
        mean = (sample_sums(charts) + sample_sums(poles)) / count
        centred = charts - mean.view(b, 1, 1, 1, 1, 1), poles - mean.view(b, 1, 1, 1)
        rstd = torch.rsqrt((sample_sums(centred[0].square()) + sample_sums(centred[1].square())) / count + self.eps)
        charts, poles = centred[0] * rstd.view(b, 1, 1, 1, 1, 1), centred[1] * rstd.view(b, 1, 1, 1)
        if self.weight is not None:
            charts = torch.addcmul(self.bias.view(-1, 1), charts, self.weight.view(-1, 1))
            poles = torch.addcmul(self.bias.view(-1, 1, 1), poles, self.weight.view(-1, 1, 1))
        return IcoSignal(charts_view(charts.to(x.charts.dtype)), poles.to(x.charts.dtype))


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
        return _per_channel(x, lambda t: t * keep.view(b, 1, 1, 1, c, 1), lambda t: t * keep.view(b, c, 1, 1))
