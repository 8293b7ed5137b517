"""Batch-norm arithmetic shared by the plain and the fused batch norm (`norm`, `fused`): statistics
per channel over batch, orientations and every vertex (summed over the ranks when synced), the
affine map they give, and the closed-form backward."""

from __future__ import annotations

import torch
import torch.distributed as dist


def per_column(values: torch.Tensor, orientations: int) -> torch.Tensor:
    """A per-channel vector [C] repeated over the orientations: one entry per column of `columns`."""
    return values.repeat_interleave(orientations)


def columns(charts: torch.Tensor) -> torch.Tensor:
    """Memory-order charts [..., C, R] as [..., C·R] (a view: R is innermost, C next).

    Per-channel arithmetic broadcasts a `per_column` vector along this last, contiguous dimension,
    which vectorises; broadcasting a [C, 1] view over [..., C, R] runs an inner loop of R = 6 and
    took about 3x as long at level-4 and 5 shapes."""
    return charts.flatten(-2)


def channel_sums(charts: torch.Tensor, poles: torch.Tensor) -> torch.Tensor:
    """Per-channel sums over everything else of memory-order charts [..., C, R] and poles [B, C, R, 2]."""
    c, r = charts.shape[-2:]
    return charts.reshape(-1, c * r).sum(0).view(c, r).sum(1) + poles.sum((0, 2, 3))


def batch_statistics(charts: torch.Tensor, poles: torch.Tensor, syncing: bool, group: object | None
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and (biased) variance of memory-order charts [..., C, R] and poles [B, C, R, 2]
    together, in float32 or wider, summed over the ranks of `group` when `syncing`; and the count.
    Not differentiable (the norms' backward is closed-form). Unsynced, it is one custom operator,
    opaque to torch.compile (its few reductions traced cost more to compile than they save)."""
    if syncing:
        return _statistics(charts, poles, syncing, group)
    c = charts.shape[-2]
    return (*local_statistics(charts, poles), charts.numel() // c + poles.numel() // c)


@torch.library.custom_op("icolightning::batch_statistics", mutates_args=())
def local_statistics(charts: torch.Tensor, poles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_statistics` on this process's values only: mean and variance."""
    mean, var, _ = _statistics(charts, poles, False, None)
    return mean, var


@local_statistics.register_fake
def _(charts, poles):
    acc = torch.promote_types(charts.dtype, torch.float32)
    c = charts.shape[-2]
    return charts.new_empty(c, dtype=acc), charts.new_empty(c, dtype=acc)


def _statistics(charts: torch.Tensor, poles: torch.Tensor, syncing: bool, group: object | None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    acc = torch.promote_types(charts.dtype, torch.float32)
    c = charts.shape[-2]
    count = charts.numel() // c + poles.numel() // c
    total = channel_sums(charts.to(acc), poles.to(acc))
    if syncing:
        stats = torch.cat([total, total.new_tensor([count])])
        dist.all_reduce(stats, group=group)
        total, count = stats[:-1], int(stats[-1].item())
    mean = total / count
    deviation = columns(charts.to(acc)) - per_column(mean, charts.shape[-1])
    centred = channel_sums(deviation.square_().view(charts.shape), (poles.to(acc) - mean.view(c, 1, 1)).square())
    if syncing:
        dist.all_reduce(centred, group=group)
    return mean, centred / count, count


def affine_of(mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with normalised = scale · x + shift, per channel."""
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    return scale, shift


def batch_norm_grads(ctx, g_charts: torch.Tensor, g_poles: torch.Tensor, charts: torch.Tensor, poles: torch.Tensor,
                     weight: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Closed-form batch-norm backward: input gradients of charts and poles, then weight's and bias's.
    `ctx` carries count, syncing, group and needs_input_grad (weight at 2, bias at 3)."""
    acc = mean.dtype
    c = mean.shape[0]
    g_charts, g_poles = g_charts.to(acc), g_poles.to(acc)
    r = charts.shape[-1]
    sum_g, sum_gxc = _grad_sums(g_charts, charts.to(acc), per_column(mean, r))
    sum_g = sum_g.view(c, r).sum(1) + g_poles.sum((0, 2, 3))
    sum_gxhat = (sum_gxc.view(c, r).sum(1) + (g_poles * (poles.to(acc) - mean.view(c, 1, 1))).sum((0, 2, 3))) * invstd
    grad_weight = sum_gxhat if weight is not None and ctx.needs_input_grad[2] else None
    grad_bias = sum_g if ctx.needs_input_grad[3] else None
    if ctx.syncing:
        both = torch.cat([sum_g, sum_gxhat])
        dist.all_reduce(both, group=ctx.group)
        sum_g, sum_gxhat = both[:c], both[c:]
    # grad_x = k (g - mean(g) - xhat mean(g xhat)) = k g + a x + b, per channel
    k = invstd if weight is None else invstd * weight
    a = -k * invstd * sum_gxhat / ctx.count
    b = -k * sum_g / ctx.count - a * mean
    dtype = charts.dtype
    k, a, b = k.to(dtype), a.to(dtype), b.to(dtype)
    k_col, a_col, b_col = (per_column(t, r) for t in (k, a, b))
    grad_charts = torch.addcmul(b_col, columns(charts), a_col).addcmul_(columns(g_charts.to(dtype)), k_col)
    grad_charts = grad_charts.view(charts.shape)
    grad_poles = torch.addcmul(b.view(c, 1, 1), poles, a.view(c, 1, 1)).addcmul_(g_poles.to(dtype), k.view(c, 1, 1))
    return grad_charts, grad_poles, grad_weight, grad_bias


def _grad_sums(grad: torch.Tensor, charts: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column [C·R] sums of `grad` and of grad · (charts - centre) over memory-order [..., C, R] tensors
    of one dtype, in one pass: the weight and bias gradients of the native batch-norm backward with unit
    scale, each (channel, orientation) column a batch-norm channel."""
    flat_grad, flat = (columns(t).reshape(-1, t.shape[-2] * t.shape[-1]) for t in (grad, charts))
    _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
        flat_grad, flat, None, None, None, centre, torch.ones_like(centre), True, 0.0, [False, True, True])
    return sum_g, sum_gx
