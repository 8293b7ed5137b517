"""Batch norm (+ ReLU) that writes its output straight into the next layer's gauge-padded buffer.

A norm inside a block always feeds a layer that gauge-pads at the same level (the next convolution,
hex pooling, upsampling, the head). Writing the normalised charts into the interior of a fresh
padded channels-last buffer and filling its one-pixel border there saves the padding's full-size
interior copy; the output signal carries the buffer (`IcoSignal.padded`) and its charts are a view
of the interior. Like every padded buffer, it holds the orientation mean at the 10 chart corners
(no frame exists there; every layer reads only that mean), so the signal's charts do too.
Backward reads the ReLU mask from that saved output (nothing mutates it later; at the corners it is
recomputed from the input),
sends the border's gradients back through `gauge_pad_backward`, then applies batch norm's closed
form.

Forward and backward are `torch.library` custom operators (`norm_relu_pad`, `norm_relu_pad_backward`),
opaque to torch.compile, so a compiled model runs these same kernels instead of a traced copy of
dozens of small ops. Only statistics summed over the ranks (synced batch norm) cannot go through an
operator (a process group is no operator argument): they run `_SyncedNormReluPad`, the same
functions under an autograd.Function, in eager mode (under torch.compile the norm then runs unfused).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.autograd.function import once_differentiable

from icolightning.nn.batch_stats import affine_of, batch_norm_grads, columns, per_column
from icolightning.nn.layout import charts_view, empty_planes, from_planes
from icolightning.nn.padding import PadTables, corner_inputs_like, fill_border, gauge_pad_backward
from icolightning.nn.signal import IcoSignal, Padded


def _interior(planes: torch.Tensor, batch: int, orientations: int) -> torch.Tensor:
    """[B, 5, H, W, C, R] memory-order view of the interior of padded channels-last planes."""
    return from_planes(planes, batch, orientations)[:, :, 1:-1, 1:-1]


def _forward(charts, poles, weight, bias, mean, invstd, relu: bool, level: int, t: PadTables
             ) -> tuple[torch.Tensor, ...]:
    """charts [B, 5, H, W, C, R] in memory order -> padded planes, patches, corner means, aligned
    neighbours, poles."""
    b, n, h, w, c, r = charts.shape
    scale, shift = (s.to(charts.dtype) for s in affine_of(mean, invstd, weight, bias))
    planes = empty_planes(b * n, c * r, h + 2, w + 2, charts)
    interior = _interior(planes, b, r)
    torch.addcmul(per_column(shift, r), columns(charts), per_column(scale, r), out=interior.view(b, n, h, w, c * r))
    out_poles = torch.addcmul(shift.view(c, 1, 1), poles, scale.view(c, 1, 1)).contiguous()
    if relu:
        interior.clamp_min_(0)
        out_poles.clamp_min_(0)
    patches, means, neighbours = fill_border(planes, out_poles, level, t)
    return planes, patches, means, neighbours, out_poles


def _backward(reduction, grads, saved, relu: bool, level: int, names: str, tables: list[torch.Tensor]
              ) -> tuple[torch.Tensor | None, ...]:
    """Gradients of `_forward` (charts, poles, weight, bias) from those of its five outputs; `reduction`
    carries count, syncing, group and needs_input_grad (see `batch_norm_grads`)."""
    g_planes, g_patches, g_own, g_nb, g_poles = grads
    charts, poles, weight, bias, mean, invstd, planes, out_poles = saved
    b, r = charts.shape[0], charts.shape[-1]
    if g_planes is None:
        g_planes = torch.zeros_like(planes)
    interior, g_pad_poles = gauge_pad_backward(g_planes.contiguous(memory_format=torch.channels_last), g_patches,
                                               g_own, g_nb, r, level, names, tables)
    g_charts = from_planes(interior, b, r)
    g_poles = g_pad_poles if g_poles is None else g_poles + g_pad_poles
    if relu:
        g_charts = _relu_backward(g_charts, planes, charts, affine_of(mean, invstd, weight, bias),
                                  PadTables(names, tables).corner_pixels_dst_cell)
        g_poles = torch.ops.aten.threshold_backward(g_poles, out_poles, 0)
    return batch_norm_grads(reduction, g_charts, g_poles, charts, poles, weight, mean, invstd)


class _SyncedNormReluPad(torch.autograd.Function):
    """`_forward` and `_backward` with statistics summed over the ranks of a process group (eager only).
    (charts, poles, weight, bias, mean, invstd, (count, syncing, group), relu, level, names, *tables)."""

    @staticmethod
    def forward(ctx, charts, poles, weight, bias, mean, invstd, reduction: tuple, relu: bool, level: int, names: str,
                *tables):
        out = _forward(charts, poles, weight, bias, mean, invstd, relu, level, PadTables(names, list(tables)))
        ctx.save_for_backward(charts, poles, weight, bias, mean, invstd, out[0], out[4], *tables)
        ctx.relu, ctx.level, ctx.names = relu, level, names
        ctx.count, ctx.syncing, ctx.group = reduction
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        grads = _backward(ctx, grads, saved[:8], ctx.relu, ctx.level, ctx.names, list(saved[8:]))
        return (*grads, None, None, None, None, None, None, *([None] * (len(saved) - 8)))


@torch.library.custom_op("icolightning::norm_relu_pad", mutates_args=())
def norm_relu_pad_op(charts: torch.Tensor, poles: torch.Tensor, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor, relu: bool, level: int,
                     names: str, tables: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm with per-channel `mean` and `invstd` (+ ReLU) of memory-order charts [B, 5, H, W, C, R]
    and poles [B, C, R, 2], written into gauge-padded channels-last planes [B·5, C·R, H+2, W+2]: the
    planes, the corner rule's inputs (see `Padded`), the poles."""
    return _forward(charts, poles, weight, bias, mean, invstd, relu, level, PadTables(names, tables))


@norm_relu_pad_op.register_fake
def _(charts, poles, weight, bias, mean, invstd, relu, level, names, tables):
    b, n, h, w, c, r = charts.shape
    return (empty_planes(b * n, c * r, h + 2, w + 2, charts), *corner_inputs_like(charts, b, c, r),
            charts.new_empty(poles.shape))


@torch.library.custom_op("icolightning::norm_relu_pad_backward", mutates_args=())
def norm_relu_pad_backward(g_planes: torch.Tensor | None, g_patches: torch.Tensor | None,
                           g_own: torch.Tensor | None, g_nb: torch.Tensor | None, g_poles: torch.Tensor | None,
                           charts: torch.Tensor, poles: torch.Tensor,
                           weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor,
                           invstd: torch.Tensor, planes: torch.Tensor, out_poles: torch.Tensor, count: int,
                           relu: bool, level: int, names: str, tables: list[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `norm_relu_pad_op`: charts' (memory order), poles', weight's and bias's (in the
    statistics' dtype; the weight's is that of a unit weight when there is none); `count` is the number
    of values per channel that the statistics were taken over. An output's gradient may be None (the
    output was not used): zeros."""
    reduction = SimpleNamespace(count=count, syncing=False, group=None, needs_input_grad=(True,) * 4)
    saved = charts, poles, weight, bias, mean, invstd, planes, out_poles
    g_charts, g_poles, g_weight, g_bias = _backward(reduction, (g_planes, g_patches, g_own, g_nb, g_poles), saved,
                                                    relu, level, names, tables)
    if g_weight is None:
        g_weight = torch.zeros_like(g_bias)
    return g_charts.contiguous(), g_poles.contiguous(), g_weight, g_bias


@norm_relu_pad_backward.register_fake
def _(g_planes, g_patches, g_own, g_nb, g_poles, charts, poles, weight, bias, mean, invstd, planes, out_poles, count,
      relu, level, names, tables):
    c = charts.shape[-2]
    return charts.new_empty(charts.shape), poles.new_empty(poles.shape), mean.new_empty(c), mean.new_empty(c)


def _save(ctx, inputs, output) -> None:
    charts, poles, weight, bias, mean, invstd, ctx.relu, ctx.level, ctx.names, tables = inputs
    ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros to fill
    ctx.count = (charts.numel() + poles.numel()) // charts.shape[-2]
    ctx.save_for_backward(charts, poles, weight, bias, mean, invstd, output[0], output[4], *tables)


def _grads(ctx, g_planes, g_patches, g_own, g_nb, g_poles):
    charts, poles, weight, bias, mean, invstd, planes, out_poles, *tables = ctx.saved_tensors
    g_charts, g_poles, g_weight, g_bias = norm_relu_pad_backward(
        g_planes, g_patches, g_own, g_nb, g_poles, charts, poles, weight, bias, mean, invstd, planes, out_poles,
        ctx.count, ctx.relu, ctx.level, ctx.names, tables)
    return (g_charts, g_poles, g_weight if ctx.has_weight else None, g_bias if ctx.has_bias else None,
            None, None, None, None, None, [None] * len(tables))


norm_relu_pad_op.register_autograd(_grads, setup_context=_save)


def _relu_backward(grad: torch.Tensor, planes: torch.Tensor, charts: torch.Tensor,
                   affine: tuple[torch.Tensor, torch.Tensor], corner_cells: torch.Tensor) -> torch.Tensor:
    """The ReLU's input gradient from its output gradient [B, 5, H, W, C, R]: the mask is read off the
    saved output in the padded buffer, except at the chart corners (`corner_cells`, unpadded cell
    indices), where the buffer holds the orientation mean and the mask is recomputed from the input."""
    b, _, h, w, c, r = charts.shape
    masked = torch.ops.aten.threshold_backward(grad, _interior(planes, b, r), 0)
    chart, pixel = corner_cells // (h * w), corner_cells % (h * w)
    at = (slice(None), chart, pixel // w, pixel % w)
    scale, shift = (t.to(charts.dtype) for t in affine)
    pre = torch.addcmul(shift.view(c, 1), charts[at], scale.view(c, 1))
    masked[at] = torch.where(pre > 0, grad[at], 0)
    return masked


def norm_relu_pad(charts: torch.Tensor, poles: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  stats: tuple[torch.Tensor, torch.Tensor], reduction: tuple[int, bool, object | None], relu: bool,
                  pad: torch.nn.Module) -> IcoSignal:
    """The normalised (and rectified) signal, its charts written into `pad`'s padded buffer.

    `charts` is in memory order [B, 5, H, W, C, R]; `stats` is (mean, invstd) per channel and `reduction`
    (count, syncing, process group) how they were reduced (the backward reduces alike); `pad` is the
    `GaugePad` of the signal's level. The result's `padded` is what `pad` would have returned."""
    b, r = charts.shape[0], charts.shape[-1]
    names, tables = pad.op_args()
    if reduction[1]:
        planes, patches, means, neighbours, out_poles = _SyncedNormReluPad.apply(
            charts, poles, weight, bias, *stats, reduction, relu, pad.level, names, *tables)
    else:
        planes, patches, means, neighbours, out_poles = norm_relu_pad_op(
            charts, poles, weight, bias, *stats, relu, pad.level, names, tables)
    n, cr, hp, wp = planes.shape
    buf = planes.view(b, n // b, cr // r, r, hp, wp).permute(0, 2, 3, 1, 4, 5)
    return IcoSignal(charts_view(_interior(planes, b, r)), out_poles, Padded(buf, patches, means, neighbours))
