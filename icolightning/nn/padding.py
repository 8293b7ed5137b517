"""Gauge padding: charts -> one-pixel-padded charts laid out for a batched conv2d.

The padded buffer is [B, 5, C, R, H+2, W+2] (charts become batch entries). Its interior is one
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
from icolightning.nn.signal import IcoSignal
from icolightning.nn.tables import CORNER, REGULAR, UNUSED, corner_table, padding_table


class Padded(NamedTuple):
    """What a layer reads: the padded buffer and the corner rule's inputs."""

    buf: torch.Tensor
    """[B, 5, C, R, H+2, W+2] contiguous."""
    patches: torch.Tensor
    """[B, C, R, 10, 9] padded 3x3 neighbourhoods of the 10 chart corners (row-major)."""
    corner_own: torch.Tensor
    """[B, C, 12] orientation mean at each corner (10 chart corners, then N, S)."""
    corner_neighbours: torch.Tensor
    """[B, C, R, 12, 5] each corner's neighbours, orientation channels aligned to the corner."""


def _offsets(chart: torch.Tensor, pos: torch.Tensor, shift: torch.Tensor, channels: int, orientations: int,
             plane: int) -> torch.Tensor:
    """[C, R, M] linear offsets, within one batch entry of a contiguous [5, C, R, plane] tensor, of
    cells (chart, pos) read at orientation (r + shift) % R."""
    r = torch.arange(orientations, device=pos.device)[:, None]
    c = torch.arange(channels, device=pos.device)[:, None, None]
    cell = chart * (channels * orientations * plane) + pos
    return c * (orientations * plane) + ((r + shift) % orientations) * plane + cell


class _GaugePadFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, charts, poles, pad: GaugePad):
        b, c, r = charts.shape[:3]
        h, w = charts.shape[-2:]
        plane = (h + 2) * (w + 2)
        buf = charts.new_empty(b, NUM_CHARTS, c, r, h + 2, w + 2)
        buf[..., 1:-1, 1:-1] = charts.permute(0, 3, 1, 2, 4, 5)
        flat = buf.view(b, -1)

        def read(chart, pos, shift):
            return flat.index_select(1, _offsets(chart, pos, shift, c, r, plane).flatten()).view(b, c, r, -1)

        def write(chart, pos, values):
            flat.index_copy_(1, _offsets(chart, pos, 0, c, r, plane).flatten(), values.reshape(b, -1))

        means = torch.cat([read(pad.cc, pad.corner_pad_pos, 0).mean(2), poles.mean(2)], dim=-1)
        nb = read(pad.nb_chart, pad.nb_pad_pos, pad.nb_toward).view(b, c, r, 12, 5)
        nb = torch.where(pad.nb_is_corner, means[:, :, pad.nb_slot].unsqueeze(2), nb)
        write(pad.reg_chart, pad.reg_pos, read(pad.reg_src_chart, pad.reg_src_pad_pos, pad.reg_shift))
        write(pad.cor_chart, pad.cor_pos, means[:, :, None, pad.cor_slot].expand(b, c, r, -1))
        flat.index_fill_(1, _offsets(pad.unused_chart, pad.unused_pos, 0, c, r, plane).flatten(), 0)
        patches = read(pad.patch_chart, pad.patch_pos, 0).view(b, c, r, 10, 9)
        ctx.pad = pad
        ctx.shapes = (charts.shape, poles.shape)
        return buf, patches, means, nb

    @staticmethod
    @once_differentiable
    def backward(ctx, g_buf, g_patches, g_own, g_nb):
        pad: GaugePad = ctx.pad
        charts_shape, poles_shape = ctx.shapes
        b, c, r, _, h, w = charts_shape
        g_buf = g_buf.contiguous()
        grad = g_buf[..., 1:-1, 1:-1].contiguous()
        g_flat, flat = g_buf.view(b, -1), grad.view(b, -1)
        plane = (h + 2) * (w + 2)

        def read(chart, pos):
            return g_flat.index_select(1, _offsets(chart, pos, 0, c, r, plane).flatten()).view(b, c, r, -1)

        g_patches = g_patches.reshape(b, c, r, 90)
        g_nb = g_nb.reshape(b, c, r, 60)
        regular = torch.cat([read(pad.reg_chart, pad.reg_pos), g_patches[..., pad.patch_regular],
                             g_nb[..., pad.nb_regular]], dim=-1)
        flat.index_add_(1, _offsets(pad.route_chart, pad.route_pos, pad.route_shift, c, r, h * w).flatten(),
                        regular.reshape(b, -1))
        at_corners = torch.cat([read(pad.cor_chart, pad.cor_pos), g_patches[..., pad.patch_corner],
                                g_nb[..., pad.nb_is_corner.flatten()]], dim=-1).sum(2)
        per_corner = g_own.index_add(2, pad.route_slot, at_corners) / r
        chart_corners = per_corner[:, :, None, :10].expand(b, c, r, 10).reshape(b, -1)
        flat.index_copy_(1, _offsets(pad.cc, pad.corner_pos, 0, c, r, h * w).flatten(), chart_corners)
        grad_poles = per_corner[:, :, None, 10:].expand(poles_shape).contiguous()
        return grad.permute(0, 2, 3, 1, 4, 5), grad_poles, None


def _long(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long)


class GaugePad(nn.Module):
    """Pad each chart by one pixel from its neighbours, shifting orientation channels to this chart's frame.

    Regular features at the 12 corners enter as their orientation mean (no frame exists there),
    both in the border and in the interior. All index tables are non-persistent buffers: they
    move with `.to()` but stay out of the state_dict.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        grid = IcoGrid(level)
        table = padding_table(level)
        height, width = grid.chart_shape
        padded_pos = table.hp * (width + 2) + table.wp
        kind = {k: table.kind == k for k in (REGULAR, CORNER, UNUSED)}
        src = table.source[kind[REGULAR]]
        src_chart, src_h, src_w = src // (height * width), (src // width) % height, src % width
        corner_pix = grid.chart_corner_pixels()
        slot_of = {int(v): k for k, v in enumerate(grid.corners)}

        cell_route = {}
        for i in range(len(table.kind)):
            key = (int(table.chart[i]), int(padded_pos[i]))
            cell_route[key] = (int(table.kind[i]), int(table.source[i]), int(table.shift[i]), int(table.corner_slot[i]))
        patch_pad_pos = ((corner_pix[:, 1:2] + np.repeat(np.arange(3), 3)) * (width + 2)
                         + corner_pix[:, 2:3] + np.tile(np.arange(3), 3))
        patch_routes = []
        for chart, row in zip(corner_pix[:, 0], patch_pad_pos, strict=True):
            for p in row:
                hp, wp = divmod(int(p), width + 2)
                own = int(chart) * height * width + (hp - 1) * width + (wp - 1)
                patch_routes.append(cell_route.get((int(chart), int(p)), (REGULAR, own, 0, -1)))
        patch_kind = np.array([route[0] for route in patch_routes])

        corners = corner_table(level)
        nb = corners.neighbours.ravel()
        nb_is_corner = corners.neighbour_is_corner.ravel()
        nb_pixel = np.where(nb_is_corner | (nb >= grid.num_chart_vertices), 0, nb)
        nb_chart, nb_h, nb_w = nb_pixel // (height * width), (nb_pixel // width) % height, nb_pixel % width

        reg_patch = [route for route in patch_routes if route[0] == REGULAR]
        route_src = np.concatenate([src, [route[1] for route in reg_patch], nb_pixel[~nb_is_corner]]).astype(np.int64)
        route_shift = np.concatenate([table.shift[kind[REGULAR]], [route[2] for route in reg_patch],
                                      corners.toward.ravel()[~nb_is_corner]])
        route_slot = np.concatenate([table.corner_slot[kind[CORNER]],
                                     [route[3] for route in patch_routes if route[0] == CORNER],
                                     [slot_of[int(v)] for v in nb[nb_is_corner]]]).astype(np.int64)
        buffers = {
            "reg_chart": table.chart[kind[REGULAR]], "reg_pos": padded_pos[kind[REGULAR]],
            "reg_src_chart": src_chart, "reg_src_pad_pos": (src_h + 1) * (width + 2) + src_w + 1,
            "reg_shift": table.shift[kind[REGULAR]],
            "cor_chart": table.chart[kind[CORNER]], "cor_pos": padded_pos[kind[CORNER]],
            "cor_slot": table.corner_slot[kind[CORNER]],
            "unused_chart": table.chart[kind[UNUSED]], "unused_pos": padded_pos[kind[UNUSED]],
            "cc": corner_pix[:, 0], "corner_pad_pos": (corner_pix[:, 1] + 1) * (width + 2) + corner_pix[:, 2] + 1,
            "corner_pos": corner_pix[:, 1] * width + corner_pix[:, 2],
            "patch_chart": np.repeat(corner_pix[:, 0], 9), "patch_pos": patch_pad_pos.ravel(),
            "patch_regular": np.flatnonzero(patch_kind == REGULAR),
            "patch_corner": np.flatnonzero(patch_kind == CORNER),
            "nb_chart": nb_chart, "nb_pad_pos": (nb_h + 1) * (width + 2) + nb_w + 1,
            "nb_toward": corners.toward.ravel(), "nb_regular": np.flatnonzero(~nb_is_corner),
            "nb_slot": np.array([[slot_of.get(int(v), 0) for v in row] for row in corners.neighbours]),
            "route_chart": route_src // (height * width), "route_pos": route_src % (height * width),
            "route_shift": route_shift, "route_slot": route_slot,
        }
        for name, values in buffers.items():
            self.register_buffer(name, _long(values), persistent=False)
        self.register_buffer("nb_is_corner", torch.as_tensor(corners.neighbour_is_corner), persistent=False)

    def forward(self, x: IcoSignal) -> Padded:
        if x.level != self.level:
            raise ValueError(f"GaugePad for level {self.level} got a level-{x.level} signal")
        return Padded(*_GaugePadFunction.apply(x.charts, x.poles, self))
