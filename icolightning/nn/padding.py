"""Gauge padding: charts -> one-pixel-padded charts laid out for a batched conv2d.

The padded buffer is [B, 5, C, R, H+2, W+2] (charts become batch entries). Its interior is one
strided copy of the input; the border (a few cells per chart) is a small gather whose index
tables come from `tables.padding_table`. A custom autograd function keeps the backward pass to
one copy of the interior plus a small scatter, which is most of what makes a layer cost about
the same as a plain conv2d.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from icolightning.grid import NUM_CHARTS, IcoGrid
from icolightning.nn.signal import IcoSignal
from icolightning.nn.tables import CORNER, REGULAR, UNUSED, padding_table


def _buffer(name: str, values) -> tuple[str, torch.Tensor]:
    return name, torch.as_tensor(values, dtype=torch.long)


class CornerMeans(nn.Module):
    """Orientation mean at the 12 corners: [B, C, 12] (10 chart corners, then N, S)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        grid = IcoGrid(level)
        pix = grid.chart_corner_pixels()
        for name, values in (_buffer("c", pix[:, 0]), _buffer("h", pix[:, 1]), _buffer("w", pix[:, 2])):
            self.register_buffer(name, values, persistent=False)

    def forward(self, charts: torch.Tensor, poles: torch.Tensor) -> torch.Tensor:
        at_charts = charts[:, :, :, self.c, self.h, self.w].mean(2)
        return torch.cat([at_charts, poles.mean(2)], dim=-1)


class _GaugePadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, charts, poles, pad: GaugePad):  # noqa: ANN001 - autograd signature
        b, c, r = charts.shape[:3]
        h, w = charts.shape[-2:]
        buf = charts.new_empty(b, NUM_CHARTS, c, r, h + 2, w + 2)
        buf[..., 1:-1, 1:-1] = charts.permute(0, 3, 1, 2, 4, 5)
        flat = buf.view(b, NUM_CHARTS, c, r, -1)
        if pad.reg_pos.numel():
            orient = pad.reg_orient[:r] % r
            values = charts[:, :, orient, pad.reg_src_c, pad.reg_src_h, pad.reg_src_w]
            flat[:, pad.reg_chart, :, :, pad.reg_pos] = values.permute(3, 0, 1, 2)
        means = pad.corner_means(charts, poles)
        flat[:, pad.cor_chart, :, :, pad.cor_pos] = means[:, :, pad.cor_slot].permute(2, 0, 1).unsqueeze(-1)
        flat[:, pad.unused_chart, :, :, pad.unused_pos] = 0
        ctx.pad = pad
        ctx.shapes = (charts.shape, poles.shape)
        return buf

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_buf):  # noqa: ANN001 - autograd signature
        pad: GaugePad = ctx.pad
        charts_shape, poles_shape = ctx.shapes
        b, c, r = charts_shape[:3]
        grad_buf = grad_buf.contiguous()
        grad = grad_buf[..., 1:-1, 1:-1].contiguous()
        grad_charts = grad.permute(0, 2, 3, 1, 4, 5)
        flat = grad_buf.view(b, NUM_CHARTS, c, r, -1)
        if pad.reg_pos.numel():
            orient = pad.reg_orient[:r] % r
            values = flat[:, pad.reg_chart, :, :, pad.reg_pos].permute(3, 0, 1, 2)
            by_source = grad.permute(1, 3, 4, 5, 0, 2)
            by_source.index_put_((pad.reg_src_c, orient, pad.reg_src_h, pad.reg_src_w), values, accumulate=True)
        corner_grad = flat[:, pad.cor_chart, :, :, pad.cor_pos].sum(-1)
        per_corner = corner_grad.new_zeros(12, b, c).index_add_(0, pad.cor_slot, corner_grad) / r
        mc = pad.corner_means
        grad_charts[:, :, :, mc.c, mc.h, mc.w] = per_corner[:10].permute(1, 2, 0).unsqueeze(2)
        grad_poles = per_corner[10:].permute(1, 2, 0).unsqueeze(2).expand(poles_shape).contiguous()
        return grad_charts, grad_poles, None


class GaugePad(nn.Module):
    """Pad each chart by one pixel from its neighbours, shifting orientation channels to this chart's frame.

    Regular features at the 12 corners enter as their orientation mean (no frame exists there),
    both in the border and in the interior. All index tables are non-persistent buffers: they
    move with `.to()` but stay out of the state_dict.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        table = padding_table(level)
        height, width = IcoGrid(level).chart_shape
        pos = table.hp * (width + 2) + table.wp
        reg = table.kind == REGULAR
        src = table.source[reg]
        src_c, src_h, src_w = (src // (height * width), (src // width) % height, src % width)
        orient = (torch.arange(6)[:, None] + torch.as_tensor(table.shift[reg])[None, :])
        buffers = [
            _buffer("reg_chart", table.chart[reg]), _buffer("reg_pos", pos[reg]),
            _buffer("reg_src_c", src_c[None]), _buffer("reg_src_h", src_h[None]),
            _buffer("reg_src_w", src_w[None]), ("reg_orient", orient),
            _buffer("cor_chart", table.chart[table.kind == CORNER]),
            _buffer("cor_pos", pos[table.kind == CORNER]),
            _buffer("cor_slot", table.corner_slot[table.kind == CORNER]),
            _buffer("unused_chart", table.chart[table.kind == UNUSED]),
            _buffer("unused_pos", pos[table.kind == UNUSED]),
        ]
        for name, values in buffers:
            self.register_buffer(name, values, persistent=False)
        self.corner_means = CornerMeans(level)

    def forward(self, x: IcoSignal) -> torch.Tensor:
        """Signal -> padded buffer [B, 5, C, R, H+2, W+2] (contiguous)."""
        if x.level != self.level:
            raise ValueError(f"GaugePad for level {self.level} got a level-{x.level} signal")
        return _GaugePadFunction.apply(x.charts, x.poles, self)
