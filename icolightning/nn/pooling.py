"""Changing level and orientation: hex pooling (r -> r-1), interpolating upsampling (r-1 -> r),
orientation pooling (regular -> scalar).

Level r-1 vertices are the level-r vertices at even chart coordinates with aligned frames, so
both directions work on the gauge-padded charts with plain strided slices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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
        pooled = _hex_windows(planes(padded.buf), h, w, self.mode)  # [B·5, C·R, h/2, w/2] channels-last
        neighbourhood = torch.cat([padded.corner_own[..., None], padded.corner_neighbours.mean(2)], dim=-1)
        corners = _reduce(neighbourhood, self.mode, -1)
        values = corners[:, :, :CHART_CORNERS].transpose(1, 2)[..., None].expand(b, CHART_CORNERS, c, r)
        pooled = from_planes(pooled, b, r)
        batch = torch.arange(b, device=pooled.device)[:, None]
        pooled = pooled.index_put((batch, self.out_c, self.out_h, self.out_w), values)
        poles = corners[:, :, None, CHART_CORNERS:].expand(b, c, r, NUM_POLES).contiguous()
        return IcoSignal(charts_view(pooled), poles)


def _hex_windows(padded: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    """Stride-2 max or mean over the 7-cell hexagon of padded [N, C, H+2, W+2] planes.

    The hexagon of (h, w) is the union of two 2x2 windows that share only the centre:
    {(0, 0), (0, 1), (1, 0), (1, 1)} and {(-1, -1), (-1, 0), (0, -1), (0, 0)} (see HEX_OFFSETS),
    so two native 2x2 pools on shifted views give it (the mean subtracts the shared centre once).
    """
    ahead, behind = _windows(padded, h, w)
    if mode == "max":
        if torch.compiler.is_compiling():  # Inductor sees the native ops and picks what to save itself
            return torch.maximum(F.max_pool2d(ahead, 2), F.max_pool2d(behind, 2))
        return _HexMaxPool.apply(padded, h, w)
    sums = F.avg_pool2d(ahead, 2, divisor_override=1) + F.avg_pool2d(behind, 2, divisor_override=1)
    return (sums - padded[..., 1:h + 1:2, 1:w + 1:2]) / 7


def _windows(padded: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The views of padded [N, C, H+2, W+2] planes whose 2x2 windows at (0, 0) and (-1, -1) make the hexagon."""
    return padded[..., 1:h + 1, 1:w + 1], padded[..., :h, :w]


def _window_max(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.aten.max_pool2d_with_indices(view, [2, 2], [2, 2])


class _HexMaxPool(torch.autograd.Function):
    """The hex max `torch.maximum(max_pool2d(ahead), max_pool2d(behind))` that saves only its input.

    Autograd through the native ops would save two int64 index tensors and both window maxima (1.5x the
    bytes of the input); the input is the padded buffer that the layer before saves anyway, so saving
    it costs nothing. Backward recomputes the two pools and applies exactly the native gradient (ties
    between the windows split it in half, as `torch.maximum`'s backward does)."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
        ctx.save_for_backward(padded)
        ctx.h, ctx.w = h, w
        ahead, behind = _windows(padded, h, w)
        return torch.maximum(_window_max(ahead)[0], _window_max(behind)[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (padded,) = ctx.saved_tensors
        views = _windows(padded, ctx.h, ctx.w)
        (a, a_index), (b, b_index) = (_window_max(view) for view in views)
        split = torch.where(a == b, grad / 2, grad)
        g_views = (split.masked_fill(a < b, 0), split.masked_fill_(a > b, 0))
        g_padded = torch.zeros_like(padded)
        for g_view, view, index, into in zip(g_views, views, (a_index, b_index), _windows(g_padded, ctx.h, ctx.w),
                                             strict=True):
            into.add_(torch.ops.aten.max_pool2d_with_indices_backward(g_view, view, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                      False, index))
        return g_padded, None, None


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
        h, w = x.charts.shape[-2:]
        here = buf[:, :, 1:h + 1, 1:w + 1]
        along_w = (here + buf[:, :, 1:h + 1, 2:w + 2]) / 2
        along_h = (here + buf[:, :, 2:h + 2, 1:w + 1]) / 2
        diagonal = (here + buf[:, :, 2:h + 2, 2:w + 2]) / 2
        even_rows = torch.stack([here, along_w], dim=4).flatten(3, 4)
        odd_rows = torch.stack([along_h, diagonal], dim=4).flatten(3, 4)
        fine = torch.stack([even_rows, odd_rows], dim=3).flatten(2, 3)  # [B, 5, 2H, 2W, C, R], the layout
        poles = x.poles.mean(2, keepdim=True).expand_as(x.poles).contiguous()
        return IcoSignal(charts_view(fine), poles)


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
