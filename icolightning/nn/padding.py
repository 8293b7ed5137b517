"""Gauge padding: charts -> one-pixel-padded charts laid out for a batched conv2d.

The padded charts are one channels-last [B·5, C·R, H+2, W+2] image batch in the layout of
`layout.py` (charts become batch entries). The interior is one strided copy of the input;
the border (a few cells per chart) is gathered along the routes of `tables.gauge_pad_routes`.
The same operator also hands out the small things the corner rule needs (3x3 patches
around the chart corners, corner orientation means, neighbour features aligned to each corner),
so that no layer ever gathers from a full-size tensor through autograd: such a gather would
cost a full-size zero fill and add in backward. The backward pass is one copy of the interior
plus small scatters, each sending a gradient back along the named route its value came by.

All gathers and scatters work on a [B, cells, C, R] view of the charts' memory and take
per-level tables only (cells and orientation shifts), so one GaugePad serves any channel count
and nothing is built or cached per call. Forward and backward are `torch.library` custom
operators, opaque to torch.compile (see `gauge_pad`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from icolightning.grid import CHART_CORNERS, CORNER_NEIGHBOURS, NUM_CHARTS, NUM_CORNERS, NUM_POLES, IcoGrid
from icolightning.nn.layout import empty_planes
from icolightning.nn.signal import IcoSignal, Padded
from icolightning.nn.tables import GaugePadRoutes, Route, gauge_pad_routes


class _Route(NamedTuple):
    cell: torch.Tensor
    shift: torch.Tensor | None


def _cells(planes: torch.Tensor, batch: int, orientations: int) -> torch.Tensor:
    """[B·5, C·R, H, W] -> [B, 5·H·W, C, R]; a view of the same memory (writes land) when channels-last."""
    height, width = planes.shape[-2:]
    return planes.permute(0, 2, 3, 1).reshape(batch, NUM_CHARTS * height * width, -1, orientations)


def _turn(values: torch.Tensor, shift: torch.Tensor | None, sign: int = 1) -> torch.Tensor:
    """[B, M, C, R] -> entry m at orientation r takes orientation (r + sign·shift[m]) % R."""
    b, m, c, r = values.shape
    if shift is None or r == 1:
        return values
    index = (torch.arange(r, device=values.device) + sign * shift[:, None]) % r
    return values.gather(3, index[None, :, None, :].expand(b, m, c, r))


def _select(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[:, index] of [B, M, C, R] values, selected on a [B, M, C·R] view: index_select over a
    4-d tensor's dimension 1 takes a generic path about 10x slower than over a 3-d one."""
    return values.flatten(2).index_select(1, index).unflatten(2, values.shape[2:])


def _read(cells: torch.Tensor, route: _Route) -> torch.Tensor:
    """[B, M, C, R]: the route's cells, each at its shifted orientations."""
    return _turn(_select(cells, route.cell), route.shift)


def _send_back(cells: torch.Tensor, route: _Route, grad: torch.Tensor) -> None:
    """Add the gradient of `_read(cells, route)` into `cells` (in place)."""
    cells.index_add_(1, route.cell, _turn(grad, route.shift, -1))


def _strips(mem: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views [B, 5, L, C, R] of rows 0 and -1, then columns 0 and -1 without those rows, of
    [B, 5, H, W, C, R] memory: the padded border, or an unpadded chart's boundary pixels."""
    return mem[:, :, 0], mem[:, :, -1], mem[:, :, 1:-1, 0], mem[:, :, 1:-1, -1]


def _by_strips(mem: torch.Tensor, values: torch.Tensor, add: bool) -> None:
    """Write (or add) [B, 5·L, C, R] values, laid out strip after strip, into the strips of `mem`."""
    values = values.unflatten(1, (NUM_CHARTS, -1))
    start = 0
    for strip in _strips(mem):
        part = values[:, :, start: start + strip.shape[2]]
        strip.add_(part) if add else strip.copy_(part)
        start += strip.shape[2]


def _feature_last(values: torch.Tensor, *shape: int) -> torch.Tensor:
    """[B, M, C, R] -> [B, C, R, *shape] (the corner-rule tensors' order)."""
    return values.permute(0, 2, 3, 1).reshape(*values.shape[:1], *values.shape[2:], *shape)


def _entry_first(values: torch.Tensor) -> torch.Tensor:
    """[B, C, R, *entries] -> [B, M, C, R]: the inverse of `_feature_last`."""
    return values.flatten(3).permute(0, 3, 1, 2)


def table_arrays(routes: GaugePadRoutes) -> dict[str, np.ndarray]:
    """The padding's tables by buffer name, in `GaugePadRoutes` field order: a route is two arrays
    (`<name>_cell`, `<name>_shift`, the latter empty when there is no shift)."""
    arrays: dict[str, np.ndarray] = {}
    for field in fields(GaugePadRoutes):
        value = getattr(routes, field.name)
        if isinstance(value, Route):
            arrays[f"{field.name}_cell"] = value.cell
            arrays[f"{field.name}_shift"] = np.zeros(0, dtype=np.int64) if value.shift is None else value.shift
        else:
            arrays[field.name] = value
    return arrays


class PadTables:
    """The padding's tables by name. The custom ops receive them as `names` (comma-separated) and the
    tensors in the same order, and rebuild the mapping here: no table is ever found by its position."""

    def __init__(self, names: str, tensors: list[torch.Tensor]) -> None:
        self.__dict__.update(zip(names.split(","), tensors, strict=True))

    @staticmethod
    def op_args(tables: dict[str, torch.Tensor]) -> tuple[str, list[torch.Tensor]]:
        """(names, tensors) as the custom ops take them."""
        return ",".join(tables), list(tables.values())

    def route(self, name: str) -> _Route:
        shift = getattr(self, f"{name}_shift")
        return _Route(getattr(self, f"{name}_cell"), shift if shift.numel() else None)


# The padding is one opaque operator for torch.compile: traced inside a graph, its dozens of
# strided views and small scatters took Inductor 80 s to compile per layer (level 2).
@torch.library.custom_op("icolightning::gauge_pad", mutates_args=())
def gauge_pad(charts: torch.Tensor, poles: torch.Tensor, level: int, names: str, tables: list[torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """charts [B, C, R, 5, H, W], poles [B, C, R, 2] -> the padded charts as a channels-last
    [B·5, C·R, H+2, W+2] image batch, then the corner rule's inputs (see `Padded`); `names` names the
    `tables` (see `PadTables`)."""
    t = PadTables(names, tables)
    b, c, r, _, h, w = charts.shape
    planes = empty_planes(b * NUM_CHARTS, c * r, h + 2, w + 2, charts)
    planes.view(b, NUM_CHARTS, c, r, h + 2, w + 2)[..., 1:-1, 1:-1] = charts.permute(0, 3, 1, 2, 4, 5)
    return (planes, *fill_border(planes, poles, level, t))


def fill_border(planes: torch.Tensor, poles: torch.Tensor, level: int, t: PadTables
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill the border of channels-last [B·5, C·R, H+2, W+2] planes whose interior holds the charts
    (in place), and return the corner rule's inputs (patches, corner means, aligned neighbours)."""
    b, r = poles.shape[0], poles.shape[2]
    c = planes.shape[1] // r
    h, w = planes.shape[-2] - 2, planes.shape[-1] - 2
    cells = _cells(planes, b, r)
    means = torch.cat([_read(cells, t.route("corner_pixels")).mean(3).transpose(1, 2), poles.mean(2)], dim=-1)
    nb = _feature_last(_read(cells, t.route("neighbours")), NUM_CORNERS, CORNER_NEIGHBOURS)
    if level == 0:
        nb = torch.where(t.neighbour_is_corner, means[:, :, t.neighbour_slot].unsqueeze(2), nb)
    _by_strips(cells.view(b, NUM_CHARTS, h + 2, w + 2, c, r), _read(cells, t.route("strips")), add=False)
    corner_values = means[:, :, t.corner_cell_slot].transpose(1, 2)[..., None].expand(-1, -1, -1, r)
    cells.index_copy_(1, t.corner_cells_cell, corner_values.contiguous())
    cells.index_fill_(1, t.unused_cells_cell, 0)
    patches = _feature_last(_read(cells, t.route("patches")), CHART_CORNERS, 9)
    return patches.contiguous(), means, nb.contiguous()


@gauge_pad.register_fake
def _(charts, poles, level, names, tables):
    b, c, r, _, h, w = charts.shape
    return (empty_planes(b * NUM_CHARTS, c * r, h + 2, w + 2, charts), *corner_inputs_like(charts, b, c, r))


def _corner_shapes(b: int, c: int, r: int) -> tuple[tuple[int, ...], ...]:
    """Shapes of `Padded`'s patches, corner_own and corner_neighbours."""
    return (b, c, r, CHART_CORNERS, 9), (b, c, NUM_CORNERS), (b, c, r, NUM_CORNERS, CORNER_NEIGHBOURS)


def corner_grads(grads: tuple[torch.Tensor | None, ...], b: int, c: int, r: int, like: torch.Tensor
                 ) -> list[torch.Tensor]:
    """The gradients of (patches, corner_own, corner_neighbours), zeros where autograd passed None
    (an output nobody used); the padding's backward needs all three."""
    return [g if g is not None else torch.zeros(shape, dtype=like.dtype, device=like.device)
            for g, shape in zip(grads, _corner_shapes(b, c, r), strict=True)]


def corner_inputs_like(like: torch.Tensor, b: int, c: int, r: int) -> list[torch.Tensor]:
    return [like.new_empty(shape) for shape in _corner_shapes(b, c, r)]


@torch.library.custom_op("icolightning::gauge_pad_backward", mutates_args=())
def gauge_pad_backward(g_planes: torch.Tensor, g_patches: torch.Tensor | None, g_own: torch.Tensor | None,
                       g_nb: torch.Tensor | None, orientations: int, level: int, names: str, tables: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `gauge_pad`: the charts' as a channels-last [B·5, C·R, H, W] batch, the poles'. The
    corner rule's gradients may be None (nobody used that output): they are zeros then."""
    t = PadTables(names, tables)
    b, r = g_planes.shape[0] // NUM_CHARTS, orientations
    c = g_planes.shape[1] // r
    g_patches, g_own, g_nb = corner_grads((g_patches, g_own, g_nb), b, c, r, g_planes)
    h, w = g_planes.shape[-2] - 2, g_planes.shape[-1] - 2
    g_padded = _cells(g_planes, b, r)
    interior = g_planes[..., 1:-1, 1:-1].contiguous(memory_format=torch.channels_last)
    grad = _cells(interior, b, r)
    if level > 0:
        _by_strips(grad.view(b, NUM_CHARTS, h, w, c, r), _read(g_padded, t.route("boundary_pull")), add=True)
    g_patches, g_nb = _entry_first(g_patches), _entry_first(g_nb)
    _send_back(grad, t.route("patch_copy_dst"), _select(g_patches, t.patch_copy))
    _send_back(grad, t.route("neighbour_copy_dst"), _select(g_nb, t.neighbour_copy))
    _send_back(grad, t.route("extra_dst"), _read(g_padded, t.route("extra_pull")))
    # Everything that held a corner's orientation mean sends its gradient to that mean.
    g_means = g_own
    for slot, g in ((t.corner_cell_slot, _select(g_padded, t.corner_cells_cell)),
                    (t.patch_corner_slot, _select(g_patches, t.patch_corner)),
                    (t.neighbour_corner_slot, _select(g_nb, t.neighbour_corner))):
        g_means = g_means.index_add(2, slot, g.sum(3).transpose(1, 2))
    per_orientation = g_means / r
    corner_grad = per_orientation[:, :, :CHART_CORNERS].transpose(1, 2)[..., None].expand(-1, -1, -1, r)
    grad.index_copy_(1, t.corner_pixels_dst_cell, corner_grad.contiguous())
    return interior, per_orientation[:, :, None, CHART_CORNERS:].expand(b, c, r, NUM_POLES).contiguous()


@gauge_pad_backward.register_fake
def _(g_planes, g_patches, g_own, g_nb, orientations, level, names, tables):
    n, cr = g_planes.shape[:2]
    h, w = g_planes.shape[-2] - 2, g_planes.shape[-1] - 2
    return (empty_planes(n, cr, h, w, g_planes),
            g_planes.new_empty(n // NUM_CHARTS, cr // orientations, orientations, NUM_POLES))


def _save_for_backward(ctx, inputs, output) -> None:
    charts, _, ctx.level, ctx.names, tables = inputs
    ctx.charts_shape, ctx.dtype = charts.shape, charts.dtype
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros to fill
    ctx.save_for_backward(*tables)


def _backward(ctx, g_planes, g_patches, g_own, g_nb):
    b, c, r, n, h, w = ctx.charts_shape
    no_grads = [None] * len(ctx.saved_tensors)
    if g_planes is None:  # only the corner rule's inputs were used, or nothing
        if g_patches is None and g_own is None and g_nb is None:
            return None, None, None, None, no_grads
        g_planes = torch.zeros((b * n, c * r, h + 2, w + 2), dtype=ctx.dtype, device=ctx.saved_tensors[0].device,
                               memory_format=torch.channels_last)
    interior, g_poles = gauge_pad_backward(g_planes, g_patches, g_own, g_nb, r, ctx.level, ctx.names,
                                           list(ctx.saved_tensors))
    return interior.view(b, n, c, r, h, w).permute(0, 2, 3, 1, 4, 5), g_poles, None, None, no_grads


gauge_pad.register_autograd(_backward, setup_context=_save_for_backward)


class GaugePad(nn.Module):
    """Pad each chart by one pixel from its neighbours, shifting orientation channels to this chart's frame.

    Regular features at the 12 corners enter as their orientation mean (no frame exists there),
    both in the border and in the interior. The border is gathered once in strip order and
    written with four slice copies (scatters cost ~10x more per element than slice copies).
    Every route of `GaugePadRoutes` is a pair of non-persistent buffers `<name>_cell` and
    `<name>_shift` (index arrays keep their name): they move with `.to()` but stay out of the
    state_dict.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.chart_shape = IcoGrid(level).chart_shape
        arrays = table_arrays(gauge_pad_routes(level))
        self.table_names = tuple(arrays)
        for name, values in arrays.items():
            dtype = torch.bool if values.dtype == bool else torch.long
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

    def tables(self) -> dict[str, torch.Tensor]:
        """The padding's tables (this module's index buffers) by name."""
        return {name: getattr(self, name) for name in self.table_names}

    def op_args(self) -> tuple[str, list[torch.Tensor]]:
        """The tables as the custom ops `gauge_pad` and `gauge_pad_backward` take them: names, tensors."""
        return PadTables.op_args(self.tables())

    def forward(self, x: IcoSignal) -> Padded:
        if x.level != self.level:
            raise ValueError(f"GaugePad for level {self.level} got a level-{x.level} signal")
        if x.padded is not None:  # the layer before wrote the padded charts already
            return x.padded
        planes, patches, own, neighbours = gauge_pad(x.charts, x.poles, self.level, *self.op_args())
        b, c, r, n, h, w = x.charts.shape
        buf = planes.view(b, n, c, r, h + 2, w + 2).permute(0, 2, 3, 1, 4, 5)
        return Padded(buf, patches, own, neighbours)
