"""Changing level and orientation: hex pooling (r -> r-1), interpolating upsampling (r-1 -> r),
orientation pooling (regular -> scalar).

Level r-1 vertices are the level-r vertices at even chart coordinates with aligned frames, so
both directions work on the gauge-padded charts with plain strided slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icolightning.grid import CHART_CORNERS, NUM_POLES, IcoGrid
from icolightning.nn.layout import charts_view, from_planes, memory, planes
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal

POOL_MODES = ("max", "mean")


def _reduce(stacked: torch.Tensor, mode: str, dim: int) -> torch.Tensor:
    return stacked.amax(dim) if mode == "max" else stacked.mean(dim)


class HexPool(nn.Module):
    """Mean or max over each level-(r-1) vertex's 7-neighbourhood at level r (stride 2).

    Regular channels are pooled orientation by orientation (all in the same chart frame after
    gauge padding). Corners pool the orientation means of themselves and their 5 neighbours.
    """

    def __init__(self, level: int, mode: str = "max") -> None:
        super().__init__()
        if level < 1:
            raise ValueError(f"HexPool needs level >= 1 (it outputs level - 1), got {level}")
        if mode not in POOL_MODES:
            raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
        self.level, self.mode = level, mode
        self.pad = GaugePad(level)
        out = IcoGrid(level - 1).chart_corner_pixels()
        for k, name in enumerate(("out_c", "out_h", "out_w")):
            self.register_buffer(name, torch.as_tensor(out[:, k]), persistent=False)

    def extra_repr(self) -> str:
        return f"level={self.level} -> {self.level - 1}, mode={self.mode}"

    def forward(self, x: IcoSignal) -> IcoSignal:
        padded = self.pad(x)
        b, c, r, _, h, w = x.charts.shape
        if self.mode == "max":  # one operator: the window maxima, the corners written into them, the poles
            pooled, poles = hex_max_pool_corners(planes(padded.buf), padded.corner_own, padded.corner_neighbours,
                                                 self.out_c, self.out_h, self.out_w, h, w)
            return IcoSignal(charts_view(from_planes(pooled, b, r)), poles)
        pooled = _hex_windows(planes(padded.buf), h, w, self.mode)  # [B·5, C·R, h/2, w/2] channels-last
        corners = _reduce(_corner_neighbourhood(padded.corner_own, padded.corner_neighbours), self.mode, -1)
        values = corners[:, :, :CHART_CORNERS].transpose(1, 2)[..., None].expand(b, CHART_CORNERS, c, r)
        pooled = from_planes(pooled, b, r)
        batch = torch.arange(b, device=pooled.device)[:, None]
        pooled = pooled.index_put((batch, self.out_c, self.out_h, self.out_w), values)
        poles = corners[:, :, None, CHART_CORNERS:].expand(b, c, r, NUM_POLES).contiguous()
        return IcoSignal(charts_view(pooled), poles)


def _corner_neighbourhood(own: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """[B, C, NUM_CORNERS, 6]: each corner's orientation mean and its 5 neighbours'."""
    return torch.cat([own[..., None], neighbours.mean(2)], dim=-1)


def _corner_pixels(b: int, out_c: torch.Tensor, out_h: torch.Tensor, out_w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Index (plane, :, row, column) of the chart corners [B, CHART_CORNERS] in [B·5, C·R, h, w] planes."""
    plane = torch.arange(b, device=out_c.device)[:, None] * 5 + out_c
    return plane, slice(None), out_h, out_w


@torch.library.custom_op("icolightning::hex_max_pool_corners", mutates_args=())
def hex_max_pool_corners(padded: torch.Tensor, own: torch.Tensor, neighbours: torch.Tensor, out_c: torch.Tensor,
                         out_h: torch.Tensor, out_w: torch.Tensor, h: int, w: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Max hex pooling of padded [B·5, C·R, H+2, W+2] planes (`hex_max_pool`), with the chart corners of
    the output (at `out_c`, `out_h`, `out_w`) and the poles [B, C, R, 2] the maximum of the corner's
    orientation mean and its 5 neighbours' (`own`, `neighbours` as in `Padded`)."""
    pooled = hex_max_pool(padded, h, w)
    b, c, r = neighbours.shape[:3]
    corners = _corner_neighbourhood(own, neighbours).amax(-1)
    values = corners[:, :, :CHART_CORNERS].transpose(1, 2)[..., None].expand(b, CHART_CORNERS, c, r)
    pooled[_corner_pixels(b, out_c, out_h, out_w)] = values.reshape(b, CHART_CORNERS, c * r)
    return pooled, corners[:, :, None, CHART_CORNERS:].expand(b, c, r, NUM_POLES).contiguous()


@hex_max_pool_corners.register_fake
def _(padded, own, neighbours, out_c, out_h, out_w, h, w):
    b, c, r = neighbours.shape[:3]
    return _like(padded, (*padded.shape[:2], h // 2, w // 2)), padded.new_empty((b, c, r, NUM_POLES))


@torch.library.custom_op("icolightning::hex_max_pool_corners_backward", mutates_args=())
def hex_max_pool_corners_backward(grad: torch.Tensor, g_poles: torch.Tensor, padded: torch.Tensor, own: torch.Tensor,
                                  neighbours: torch.Tensor, out_c: torch.Tensor, out_h: torch.Tensor,
                                  out_w: torch.Tensor, h: int, w: int
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `hex_max_pool_corners` (padded planes', corner means', neighbours'): the corners' outputs
    send nothing through the windows; a corner's maximum gives its gradient to the values that reach it,
    split evenly between ties (as `amax`'s backward)."""
    b, c, r = neighbours.shape[:3]
    at = _corner_pixels(b, out_c, out_h, out_w)
    g_corners = torch.cat([grad[at].view(b, CHART_CORNERS, c, r).sum(-1).transpose(1, 2), g_poles.sum(2)], dim=-1)
    windows = grad.clone(memory_format=torch.channels_last if grad.is_contiguous(memory_format=torch.channels_last)
                         else torch.contiguous_format)
    windows[at] = 0
    g_padded = hex_max_pool_backward(windows, padded, h, w)
    neighbourhood = _corner_neighbourhood(own, neighbours)
    top = neighbourhood == neighbourhood.amax(-1, keepdim=True)
    g_neighbourhood = top * (g_corners / top.sum(-1))[..., None]
    g_nb = (g_neighbourhood[..., None, :, 1:] / r).expand(neighbours.shape).contiguous()
    return g_padded, g_neighbourhood[..., 0].contiguous(), g_nb


@hex_max_pool_corners_backward.register_fake
def _(grad, g_poles, padded, own, neighbours, out_c, out_h, out_w, h, w):
    return _like(padded, padded.shape), own.new_empty(own.shape), neighbours.new_empty(neighbours.shape)


def _save_corners(ctx, inputs, output) -> None:
    padded, own, neighbours, out_c, out_h, out_w, ctx.h, ctx.w = inputs
    ctx.save_for_backward(padded, own, neighbours, out_c, out_h, out_w)


def _corners_grad(ctx, grad, g_poles):
    g_padded, g_own, g_nb = hex_max_pool_corners_backward(grad, g_poles, *ctx.saved_tensors, ctx.h, ctx.w)
    return g_padded, g_own, g_nb, None, None, None, None, None


hex_max_pool_corners.register_autograd(_corners_grad, setup_context=_save_corners)


def _hex_windows(padded: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    """Stride-2 max or mean over the 7-cell hexagon of padded [N, C, H+2, W+2] planes.

    The hexagon of (h, w) is the union of two 2x2 windows that share only the centre:
    {(0, 0), (0, 1), (1, 0), (1, 1)} and {(-1, -1), (-1, 0), (0, -1), (0, 0)} (see HEX_OFFSETS),
    so two native 2x2 pools on shifted views give it (the mean subtracts the shared centre once).
    """
    if mode == "max":
        return hex_max_pool(padded, h, w)
    ahead, behind = _windows(padded, h, w)
    sums = F.avg_pool2d(ahead, 2, divisor_override=1) + F.avg_pool2d(behind, 2, divisor_override=1)
    return (sums - padded[..., 1:h + 1:2, 1:w + 1:2]) / 7


def _windows(padded: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The views of padded [N, C, H+2, W+2] planes whose 2x2 windows at (0, 0) and (-1, -1) make the hexagon."""
    return padded[..., 1:h + 1, 1:w + 1], padded[..., :h, :w]


_KERNEL, _STRIDE = [2, 2], [2, 2]


def _hex_pools(padded: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, ...]:
    """The two window maxima of `_windows` and their argmax, as indices into the padded planes.

    Both pools run on the whole contiguous buffer (pooling a strided view copies it first): windows
    at odd offsets are those of a pool with one cell of (-inf) padding, without its first and last
    output rows and columns; windows at even offsets are a plain pool's, without its last ones."""
    ahead, ahead_index = torch.ops.aten.max_pool2d_with_indices(padded, _KERNEL, _STRIDE, [1, 1])
    behind, behind_index = torch.ops.aten.max_pool2d_with_indices(padded, _KERNEL, _STRIDE)
    inner_ahead = (..., slice(1, h // 2 + 1), slice(1, w // 2 + 1))
    inner_behind = (..., slice(0, h // 2), slice(0, w // 2))
    return ahead[inner_ahead], ahead_index[inner_ahead], behind[inner_behind], behind_index[inner_behind]


def _like(padded: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of `shape` in `padded`'s memory format (channels-last or contiguous)."""
    layout = torch.channels_last if padded.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return torch.empty(shape, dtype=padded.dtype, device=padded.device, memory_format=layout)


# The hex max is one opaque operator, forward and backward, in eager mode and under torch.compile alike.
@torch.library.custom_op("icolightning::hex_max_pool", mutates_args=())
def hex_max_pool(padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`torch.maximum(max_pool2d(ahead), max_pool2d(behind))` of padded [N, C, H+2, W+2] planes (see
    `_windows`), in their memory format; autograd saves only the input.

    Autograd through the native ops would save two int64 index tensors and both window maxima (1.5x the
    bytes of the input); the input is the padded buffer that the layer before saves anyway, so saving
    it costs nothing. Backward (`hex_max_pool_backward`) recomputes the two pools and applies exactly the
    native gradient: each window's first maximum in row-major order gets it, and ties between the
    windows split it in half, as `torch.maximum`'s backward does (bit for bit for finite inputs and
    gradients)."""
    ahead, _, behind, _ = _hex_pools(padded, h, w)
    return torch.maximum(ahead, behind, out=_like(padded, ahead.shape))


@hex_max_pool.register_fake
def _(padded, h, w):
    return _like(padded, (*padded.shape[:2], h // 2, w // 2))


@torch.library.custom_op("icolightning::hex_max_pool_backward", mutates_args=())
def hex_max_pool_backward(grad: torch.Tensor, padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The gradient of `hex_max_pool` with respect to `padded`, in its memory format."""
    ahead, ahead_index, behind, behind_index = _hex_pools(padded, h, w)
    # 1/2, 0 or -1/2: the ahead window takes grad * (1/2 + half) (all, half or none of it), the
    # behind window the rest; products with 1, 1/2 and 0 are exact.
    half = torch.sign(ahead - behind).mul_(0.5)
    layout = torch.channels_last if padded.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    index = torch.cat([ahead_index, behind_index], -1).contiguous(memory_format=layout)
    del ahead, ahead_index, behind, behind_index  # the pool outputs go before the gradient is allocated
    both = torch.cat([grad * (0.5 + half), grad * (0.5 - half)], -1).contiguous(memory_format=layout)
    del half
    # One native scatter-add of both windows' gradients into zeroed planes of the padded shape: the
    # kernel adds both[o] at index[o] for every output o, plane by plane (so no two threads add into
    # one plane). Kernel 3 with strides (2, 1) only makes (H+2, W+2) planes give the (h/2, w) shape.
    g_padded = torch.ops.aten.max_pool2d_with_indices_backward(both, padded, [3, 3], [2, 1], [0, 0], [1, 1],
                                                               False, index)
    return g_padded.contiguous(memory_format=layout)


@hex_max_pool_backward.register_fake
def _(grad, padded, h, w):
    return _like(padded, padded.shape)


def _save_padded(ctx, inputs, output) -> None:
    padded, ctx.h, ctx.w = inputs
    ctx.save_for_backward(padded)


def _hex_max_grad(ctx, grad):
    (padded,) = ctx.saved_tensors
    return hex_max_pool_backward(grad, padded, ctx.h, ctx.w), None, None


hex_max_pool.register_autograd(_hex_max_grad, setup_context=_save_padded)


class IcoUpsample(nn.Module):
    """Level r -> r+1 by interpolation: old vertices keep their value, a new vertex (an edge
    midpoint) takes the mean of the edge's two endpoints, read from the gauge-padded charts."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.pad = GaugePad(level)

    def extra_repr(self) -> str:
        return f"level={self.level} -> {self.level + 1}"

    def forward(self, x: IcoSignal) -> IcoSignal:
        buf = memory(self.pad(x).buf)  # [B, 5, H+2, W+2, C, R]
        fine, poles = interpolate(buf, x.poles)
        return IcoSignal(charts_view(fine), poles)  # the layout: [B, 5, 2H, 2W, C, R] in memory


_STENCIL = (((0, 1), (1, 2)), ((1, 0), (2, 1)), ((1, 1), (2, 2)))
"""(parity class of the fine charts, offset of the neighbour averaged with the vertex in the padded
buffer): along w, along h, and the diagonal."""


# The stencil is one opaque operator, forward and backward, in eager mode and under torch.compile alike.
@torch.library.custom_op("icolightning::interpolate", mutates_args=())
def interpolate(buf: torch.Tensor, poles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 5, H+2, W+2, C, R] padded charts -> contiguous [B, 5, 2H, 2W, C, R]: even rows and columns keep
    the vertex, the others the mean of it and its neighbour along w, h or the diagonal (h+1, w+1); and
    the poles [B, C, R, 2] -> their orientation mean (a pole has no frame), contiguous.

    The four parity classes are written straight into the output; backward (`interpolate_backward`) adds
    the fixed stencil's gradient into one zeroed padded buffer (autograd through slices, `stack` and
    `div` zero-filled and summed a padded-size gradient per slice)."""
    b, n, hp, wp, c, r = buf.shape
    h, w = hp - 2, wp - 2
    here = buf[:, :, 1:h + 1, 1:w + 1]
    fine = buf.new_empty((b, n, 2 * h, 2 * w, c, r))
    fine[:, :, ::2, ::2] = here
    for (row, col), (dh, dw) in _STENCIL:
        torch.add(here, buf[:, :, dh:h + dh, dw:w + dw], out=fine[:, :, row::2, col::2]).div_(2)
    return fine, poles.mean(2, keepdim=True).expand_as(poles).contiguous()


@interpolate.register_fake
def _(buf, poles):
    b, n, hp, wp, c, r = buf.shape
    return buf.new_empty((b, n, 2 * (hp - 2), 2 * (wp - 2), c, r)), poles.new_empty(poles.shape)


@torch.library.custom_op("icolightning::interpolate_backward", mutates_args=())
def interpolate_backward(grad: torch.Tensor, g_poles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of `interpolate`: of its padded input, contiguous [B, 5, H+2, W+2, C, R], and of the
    poles (each orientation gets the mean of the outputs' gradients), contiguous."""
    b, n, h2, w2, c, r = grad.shape
    h, w = h2 // 2, w2 // 2
    g_buf = grad.new_zeros((b, n, h + 2, w + 2, c, r))
    here = g_buf[:, :, 1:h + 1, 1:w + 1]
    here.copy_(grad[:, :, ::2, ::2])  # grad may be a strided view: read through slices, not copied
    for (row, col), (dh, dw) in _STENCIL:
        half = grad[:, :, row::2, col::2] / 2
        here.add_(half)
        g_buf[:, :, dh:h + dh, dw:w + dw].add_(half)
    return g_buf, g_poles.mean(2, keepdim=True).expand_as(g_poles).contiguous()


@interpolate_backward.register_fake
def _(grad, g_poles):
    b, n, h2, w2, c, r = grad.shape
    return grad.new_empty((b, n, h2 // 2 + 2, w2 // 2 + 2, c, r)), g_poles.new_empty(g_poles.shape)


interpolate.register_autograd(lambda ctx, grad, g_poles: interpolate_backward(grad, g_poles),
                              setup_context=lambda ctx, inputs, output: None)


class OrientationPool(nn.Module):
    """Regular -> scalar by the mean or max over the 6 orientation channels (invariant)."""

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"orientation pool mode must be one of {POOL_MODES}, got {mode!r}")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"mode={self.mode}"

    def forward(self, x: IcoSignal) -> IcoSignal:
        charts = _reduce(memory(x.charts), self.mode, -1).unsqueeze(-1)
        return IcoSignal(charts_view(charts), _reduce(x.poles, self.mode, 2).unsqueeze(2))
