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
form. Eager mode only: under torch.compile the unfused layers run and Inductor fuses them.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from icolightning.nn.batch_stats import affine_of, batch_norm_grads, columns, per_column
from icolightning.nn.layout import charts_view, empty_planes, from_planes
from icolightning.nn.padding import PadTables, corner_grads, fill_border, gauge_pad_backward
from icolightning.nn.signal import IcoSignal, Padded


def _interior(planes: torch.Tensor, batch: int, orientations: int) -> torch.Tensor:
    """[B, 5, H, W, C, R] memory-order view of the interior of padded channels-last planes."""
    return from_planes(planes, batch, orientations)[:, :, 1:-1, 1:-1]


class _NormReluPad(torch.autograd.Function):
    """(charts [B, 5, H, W, C, R] in memory order, poles, weight, bias, statistics (mean, invstd, count),
    relu, level, table names, *tables) -> padded planes, patches, corner means, aligned neighbours, poles."""

    @staticmethod
    def forward(ctx, charts, poles, weight, bias, mean, invstd, reduction: tuple, relu: bool, level: int, names: str,
                *tables):

        b, n, h, w, c, r = charts.shape
        scale, shift = (t.to(charts.dtype) for t in affine_of(mean, invstd, weight, bias))
        planes = empty_planes(b * n, c * r, h + 2, w + 2, charts)
        interior = _interior(planes, b, r)
        torch.addcmul(per_column(shift, r), columns(charts), per_column(scale, r), out=interior.view(b, n, h, w, c * r))
        out_poles = torch.addcmul(shift.view(c, 1, 1), poles, scale.view(c, 1, 1))
        if relu:
            interior.clamp_min_(0)
            out_poles.clamp_min_(0)
        patches, means, neighbours = fill_border(planes, out_poles, level, PadTables(names, list(tables)))
        ctx.save_for_backward(charts, poles, weight, bias, mean, invstd, planes, out_poles, *tables)
        ctx.relu, ctx.level, ctx.names, ctx.num_tables = relu, level, names, len(tables)
        ctx.count, ctx.syncing, ctx.group = reduction
        return planes, patches, means, neighbours, out_poles

    @staticmethod
    @once_differentiable
    def backward(ctx, g_planes, g_patches, g_own, g_nb, g_poles):

        charts, poles, weight, bias, mean, invstd, planes, out_poles, *tables = ctx.saved_tensors
        b, r = charts.shape[0], charts.shape[-1]
        c = charts.shape[-2]
        g_patches, g_own, g_nb = corner_grads((g_patches, g_own, g_nb), b, c, r, charts)
        if g_planes is None:
            g_planes = torch.zeros_like(planes)
        interior, g_pad_poles = gauge_pad_backward(g_planes.contiguous(memory_format=torch.channels_last), g_patches,
                                                   g_own, g_nb, ctx.level, ctx.names, tables)
        g_charts = from_planes(interior, b, r)
        g_poles = g_pad_poles if g_poles is None else g_poles + g_pad_poles
        if ctx.relu:
            g_charts = _relu_backward(g_charts, planes, charts, affine_of(mean, invstd, weight, bias),
                                      PadTables(ctx.names, tables).corner_pixels_dst_cell)
            g_poles = torch.ops.aten.threshold_backward(g_poles, out_poles, 0)
        grads = batch_norm_grads(ctx, g_charts, g_poles, charts, poles, weight, mean, invstd)
        return (*grads, None, None, None, None, None, None, *([None] * ctx.num_tables))


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
    planes, patches, means, neighbours, out_poles = _NormReluPad.apply(
        charts, poles, weight, bias, *stats, reduction, relu, pad.level, names, *tables)
    n, cr, hp, wp = planes.shape
    buf = planes.view(b, n // b, cr // r, r, hp, wp).permute(0, 2, 3, 1, 4, 5)
    return IcoSignal(charts_view(_interior(planes, b, r)), out_poles, Padded(buf, patches, means, neighbours))
