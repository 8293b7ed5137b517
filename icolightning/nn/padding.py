"""Gauge padding: charts -> one-pixel-padded charts laid out for a batched conv2d.

The padded buffer is [B, C, R, 5, H+2, W+2] in the layout of `layout.py` (a channels-last
[B·5, C·R, H+2, W+2] image batch: charts become batch entries). Its interior is one
strided copy of the input; the border (a few cells per chart) is a small gather whose index
tables come from `tables.padding_table`. The same autograd function also hands out the small
things the corner rule needs (3x3 patches around the chart corners, corner orientation means,
neighbour features aligned to each corner), so that no layer ever gathers from a full-size
tensor through autograd: such a gather would cost a full-size zero fill and add in backward.
The backward pass is one copy of the interior plus small scatters.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from icolightning.grid import NUM_CHARTS, IcoGrid
from icolightning.nn.layout import empty_planes
from icolightning.nn.layout import planes as as_planes
from icolightning.nn.signal import IcoSignal
from icolightning.nn.tables import gauge_pad_index


class Padded(NamedTuple):
    """What a layer reads: the padded buffer and the corner rule's inputs."""

    buf: torch.Tensor
    """[B, C, R, 5, H+2, W+2] padded charts in the layout (`layout.planes` gives the conv input)."""
    patches: torch.Tensor
    """[B, C, R, 10, 9] padded 3x3 neighbourhoods of the 10 chart corners (row-major)."""
    corner_own: torch.Tensor
    """[B, C, 12] orientation mean at each corner (10 chart corners, then N, S)."""
    corner_neighbours: torch.Tensor
    """[B, C, R, 12, 5] each corner's neighbours, orientation channels aligned to the corner."""


def _offsets(chart: torch.Tensor, pos: torch.Tensor, shift: torch.Tensor, channels: int, orientations: int,
             plane: int) -> torch.Tensor:
    """Flat offsets, within one batch entry of a channels-last [5, plane, C, R] buffer, of cells
    (chart, pos) read at orientation (r + shift) % R. Inputs [M] or [G, M] give [C, R, M] or
    [G, C, R, M] (flattened)."""
    chart, pos, shift = (t if t.dim() == 0 else (t if t.dim() == 2 else t[None])[:, None, None, :]
                         for t in (chart, pos, shift))
    r = torch.arange(orientations, device=pos.device)[:, None]
    c = torch.arange(channels, device=pos.device)[:, None, None]
    out = (chart * plane + pos) * (channels * orientations) + c * orientations
    return (out + (r + shift) % orientations).flatten()


def _per_batch(planes: torch.Tensor, batch: int) -> torch.Tensor:
    """[B·5, C·R, H, W] channels-last -> [B, 5·H·W·C·R] in memory order; a view, so writes land."""
    return planes.permute(0, 2, 3, 1).view(batch, -1)


def _border_strips(buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of the one-pixel border in strip order: bottom row, top row, left and right column."""
    return buf[..., 0, :], buf[..., -1, :], buf[..., 1:-1, 0], buf[..., 1:-1, -1]


def _boundary_strips(charts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of each chart's outermost pixels: row 0, row H-1, then columns 0 and W-1 without them."""
    return charts[..., 0, :], charts[..., -1, :], charts[..., 1:-1, 0], charts[..., 1:-1, -1]


class _GaugePadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, charts, poles, pad: GaugePad):
        b, c, r = charts.shape[:3]
        h, w = charts.shape[-2:]
        off = pad.offsets(c, r, charts.device)
        planes = empty_planes(b * NUM_CHARTS, c * r, h + 2, w + 2, charts)
        buf = planes.view(b, NUM_CHARTS, c, r, h + 2, w + 2)
        buf[..., 1:-1, 1:-1] = charts.permute(0, 3, 1, 2, 4, 5)
        flat = _per_batch(planes, b)

        def read(offsets: torch.Tensor) -> torch.Tensor:
            return flat.index_select(1, offsets).view(b, c, r, -1)

        means = torch.cat([read(off["corner_pixels"]).mean(2), poles.mean(2)], dim=-1)
        nb = read(off["neighbours"]).view(b, c, r, 12, 5)
        if pad.level == 0:
            nb = torch.where(pad.nb_is_corner, means[:, :, pad.nb_slot].unsqueeze(2), nb)
        border = flat.index_select(1, off["strips"]).view(b, NUM_CHARTS, c, r, -1)
        start = 0
        for strip in _border_strips(buf):
            strip.copy_(border[..., start: start + strip.shape[-1]])
            start += strip.shape[-1]
        corner_values = means[:, :, None, pad.corner_cell_slot].expand(b, c, r, -1)
        flat.index_copy_(1, off["corner_dst"], corner_values.reshape(b, -1))
        flat.index_fill_(1, off["unused_dst"], 0)
        patches = read(off["patches"]).view(b, c, r, 10, 9)
        ctx.pad = pad
        ctx.shapes = (charts.shape, poles.shape)
        return buf.permute(0, 2, 3, 1, 4, 5), patches, means, nb

    @staticmethod
    @once_differentiable
    def backward(ctx, g_buf, g_patches, g_own, g_nb):
        pad: GaugePad = ctx.pad
        charts_shape, poles_shape = ctx.shapes
        b, c, r, _, h, w = charts_shape
        off = pad.offsets(c, r, g_buf.device)
        g_planes = as_planes(g_buf)
        g_flat = g_planes.permute(0, 2, 3, 1).reshape(b, -1)
        planes = g_planes[..., 1:-1, 1:-1].contiguous(memory_format=torch.channels_last)
        grad = planes.view(b, NUM_CHARTS, c, r, h, w)
        flat = _per_batch(planes, b)
        if pad.level > 0:
            pulled = g_flat.index_select(1, off["boundary_pull"]).view(b, NUM_CHARTS, c, r, -1)
            start = 0
            for strip in _boundary_strips(grad):
                strip.add_(pulled[..., start: start + strip.shape[-1]])
                start += strip.shape[-1]
        g_patches = g_patches.reshape(b, c, r, 90)
        g_nb = g_nb.reshape(b, c, r, 60)
        small = torch.cat([g_patches[..., pad.patch_regular], g_nb[..., pad.nb_regular],
                           g_flat.index_select(1, off["extra_pull"]).view(b, c, r, -1)], dim=-1)
        flat.index_add_(1, off["small_routes"], small.reshape(b, -1))
        at_corners = torch.cat([g_flat.index_select(1, off["corner_dst"]).view(b, c, r, -1),
                                g_patches[..., pad.patch_corner], g_nb[..., pad.nb_is_corner.flatten()]], dim=-1)
        per_corner = g_own.index_add(2, pad.route_slot, at_corners.sum(2)) / r
        flat.index_copy_(1, off["corner_grad"], per_corner[:, :, None, :10].expand(b, c, r, 10).reshape(b, -1))
        grad_poles = per_corner[:, :, None, 10:].expand(poles_shape).contiguous()
        return grad.permute(0, 2, 3, 1, 4, 5), grad_poles, None


def _long(values: np.ndarray) -> torch.Tensor:
    """A copy: the index arrays are cached per level and shared by every layer of that level."""
    return torch.tensor(values, dtype=torch.long)


class GaugePad(nn.Module):
    """Pad each chart by one pixel from its neighbours, shifting orientation channels to this chart's frame.

    Regular features at the 12 corners enter as their orientation mean (no frame exists there),
    both in the border and in the interior. The border is gathered once in strip order and
    written with four slice copies (scatters cost ~10x more per element than slice copies).
    All index tables are non-persistent buffers: they move with `.to()` but stay out of the
    state_dict.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        index = gauge_pad_index(level)
        self.chart_shape = IcoGrid(level).chart_shape
        for name, values in index.items():
            tensor = torch.tensor(values) if values.dtype == bool else _long(values)
            self.register_buffer(name, tensor, persistent=False)
        self._offset_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def offsets(self, channels: int, orientations: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Flat offsets into one batch entry of the padded buffer (or of the unpadded gradient),
        derived from the index buffers for a given channel count and cached: building them per
        call costs more than the gathers themselves."""
        key = (channels, orientations, device)
        cached = self._offset_cache.get(key)
        if cached is None:
            height, width = self.chart_shape
            plane, unpadded = (height + 2) * (width + 2), height * width

            def offsets(chart, pos, shift=0, size=plane):
                return _offsets(chart.to(device), pos.to(device), torch.as_tensor(shift, device=device),
                                channels, orientations, size)

            cached = {
                "corner_pixels": offsets(self.corner_chart, self.corner_pad_pos),
                "neighbours": offsets(self.nb_chart, self.nb_pad_pos, self.nb_toward),
                "strips": offsets(self.strip_src_chart, self.strip_src_pos, self.strip_shift),
                "boundary_pull": offsets(self.pull_chart, self.pull_pos, self.pull_shift),
                "extra_pull": offsets(self.extra_chart, self.extra_pos, self.extra_shift),
                "corner_dst": offsets(self.corner_cell_chart, self.corner_cell_pos),
                "unused_dst": offsets(self.unused_chart, self.unused_pos),
                "patches": offsets(self.patch_chart, self.patch_pos),
                "small_routes": offsets(self.small_chart, self.small_pos, self.small_shift, unpadded),
                "corner_grad": offsets(self.corner_chart, self.corner_pos, 0, unpadded),
            }
            self._offset_cache[key] = cached
        return cached

    def forward(self, x: IcoSignal) -> Padded:
        if x.level != self.level:
            raise ValueError(f"GaugePad for level {self.level} got a level-{x.level} signal")
        return Padded(*_GaugePadFunction.apply(x.charts, x.poles, self))
