"""IcoConv: the gauge-equivariant hexagonal convolution (p6 group convolution per chart).

A filter has 7 taps (centre + 6 hex neighbours) per (out channel, in channel, in orientation).
Output orientation i uses the taps rotated by i·60° and the input orientation channels shifted
by i. The taps are gathered into a dense channels-last (C_out·R_out, C_in·R_in, 3, 3) kernel by one
precomputed index, and the whole layer is one conv2d over the gauge-padded charts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from icolightning.grid import CHART_CORNERS, HEX_OFFSETS, NUM_CHARTS, NUM_POLES, ORIENTATIONS, IcoGrid
from icolightning.nn.layout import charts_view, empty_planes, planes
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal, rep_size
from icolightning.nn.tables import corner_table, hex_kernel_pattern, kernel_expansion

_CENTRE = 4
_TAPS_3X3 = 9
_TAP_POSITION = [(dh + 1) * 3 + (dw + 1) for dh, dw in HEX_OFFSETS]


class IcoConv(nn.Module):
    """Gauge-equivariant convolution on level-`level` charts.

    Reps: "scalar" (R=1) or "regular" (R=6) for input and output. A scalar output is the
    orientation average of the regular response, i.e. a learned invariant map. `stride=2`
    evaluates the layer at the level-(r-1) vertices (even chart coordinates): a downsampling
    convolution. Input is an `IcoSignal`, or a plain chart tensor [B, C, R, 5, H, W] whose
    poles are then taken as the mean of their 5 neighbours (a plain tensor has no poles).

    The 12 corners get the corner rule: the layer applied as if the neighbourhood looked like
    the average of the 5 neighbours, each seen from the corner (orientation-invariant output).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        level: int,
        in_rep: str = "regular",
        out_rep: str = "regular",
        bias: bool = True,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2) or (stride == 2 and level < 1):
            raise ValueError(f"stride must be 1, or 2 at level >= 1; got stride={stride} at level {level}")
        self.in_channels, self.out_channels, self.level, self.stride = in_channels, out_channels, level, stride
        self.in_rep, self.out_rep = in_rep, out_rep
        self.in_orientations, self.out_orientations = rep_size(in_rep), rep_size(out_rep)
        r_in = self.in_orientations
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, r_in, 7))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.register_buffer("kernel_taps", torch.as_tensor(_kernel_taps(in_channels, r_in)), persistent=False)
        # Output orientation 0's dense kernel (for a scalar output: the sum of the 6 rotated copies,
        # divided by `_rotations`), as a [R_in·7, R_in·9] matrix on the taps; the corner rule's weights
        # are a fixed selection of it.
        orientation_0 = kernel_expansion(r_in, self.out_orientations)[:, :r_in * _TAPS_3X3]
        self._rotations = ORIENTATIONS if self.out_orientations == 1 else 1
        self._gain = float(in_channels * np.square(orientation_0 / self._rotations).sum())
        self.register_buffer("corner_expansion", torch.as_tensor(orientation_0 @ _corner_selection(r_in),
                                                                 dtype=torch.float32), persistent=False)
        out_corners = IcoGrid(level - stride + 1).chart_corner_pixels()
        self.register_buffer("out_corners", torch.as_tensor(out_corners), persistent=False)
        pole_neighbours = np.unravel_index(corner_table(level).neighbours[CHART_CORNERS:],
                                           (NUM_CHARTS, *IcoGrid(level).chart_shape))
        self.register_buffer("pole_neighbours", torch.as_tensor(np.stack(pole_neighbours)), persistent=False)
        self.pad = GaugePad(level)
        height, width = IcoGrid(level - stride + 1).chart_shape
        self._overwrite_corners = _corner_macs_per_pixel(in_channels * r_in, len(out_corners), height * width
                                                         ) > OVERWRITE_CORNERS_ABOVE
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for the kernel the layer really applies: for unit-variance inputs an
        output channel's variance is C_in · var(w) · |E_0|², where E_0 maps the taps to output
        orientation 0's dense kernel (a scalar output averages 6 rotated copies, shrinking it)."""
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / self._gain))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}x{self.in_rep} -> {self.out_channels}x{self.out_rep}, level={self.level}, "
                f"stride={self.stride}, bias={self.bias is not None}")

    def dense_kernel(self) -> torch.Tensor:
        """[C_out·R_out, C_in·R_in, 3, 3] channels-last conv2d kernel from the 7-tap weights."""
        return _dense_kernels(self.weight, self.kernel_taps, self.out_orientations, self._rotations,
                              [self.in_channels])[0]

    def forward(self, x: IcoSignal | torch.Tensor | Sequence[IcoSignal]) -> IcoSignal | torch.Tensor:
        """`x` may be a sequence of signals: the layer applied to their channel concatenation, without
        building it (U-Net skips). The layer is linear in its input, so each part gets its slice of the
        kernel (by input channel) and its own padded buffer (the one a fused norm wrote, if any), and
        the parts' convolutions add up into one output (see `ico_conv`)."""
        plain = isinstance(x, torch.Tensor)
        if plain:
            parts = [with_estimated_poles(x, self.pole_neighbours)]
        else:  # an IcoSignal is a tuple too
            parts = [x] if isinstance(x, IcoSignal) else list(x)
        shapes = [tuple(s.charts.shape) for s in parts]
        if (any(s.orientations != self.in_orientations for s in parts)
                or sum(s.charts.shape[1] for s in parts) != self.in_channels):
            raise ValueError(f"{self.__class__.__name__}({self.extra_repr()}) got charts of shape "
                             f"{shapes[0] if len(shapes) == 1 else shapes}")
        padded = [self.pad(s) for s in parts]
        b = padded[0].buf.shape[0]
        cast = _autocast(padded[0].buf)
        y, poles = ico_conv([cast(planes(p.buf)) for p in padded], [cast(p.patches) for p in padded],
                            [cast(p.corner_own) for p in padded], [cast(p.corner_neighbours) for p in padded],
                            cast(self.weight), None if self.bias is None else cast(self.bias), self.kernel_taps,
                            cast(self.corner_expansion), self.out_corners, self.out_orientations, self._rotations,
                            self._overwrite_corners, self.stride)
        charts = charts_view(y.permute(0, 2, 3, 1).reshape(b, NUM_CHARTS, *y.shape[-2:], self.out_channels, -1))
        return charts if plain else IcoSignal(charts, poles)


def _autocast(like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The cast autocast would apply to a convolution's operands on `like`'s device (none when it is off):
    the custom operator runs below autocast, so its inputs are cast before it, as conv2d's would be."""
    device = like.device.type
    if device == "meta" or not torch.is_autocast_enabled(device):
        return lambda t: t
    dtype = torch.get_autocast_dtype(device)
    return lambda t: t.to(dtype)


def _dense_kernels(weight: torch.Tensor, taps: torch.Tensor, out_orientations: int, rotations: int,
                   channels: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The channels-last conv2d kernel [C_out·R_out, C_in·R_in, 3, 3], split by input part (`channels`
    input channels each), gathered from the 7-tap weights and a zero slot (the two taps a hexagon
    lacks) by the index `taps` (`_kernel_taps`): a gather, not a matmul with a 0/1 matrix, and
    channels-last like the charts, so conv2d reorders neither the kernel nor its gradient (a split
    part is a strided view, which conv2d copies). A scalar output averages the `rotations` copies."""
    o, r = weight.shape[0], weight.shape[2]
    dense = nn.functional.pad(weight, (0, 1)).reshape(o, -1).index_select(1, taps).view(o, ORIENTATIONS, _TAPS_3X3, -1)
    if out_orientations == 1:
        dense = dense.sum(1, keepdim=True) / rotations
    kernel = dense.view(o * out_orientations, 3, 3, -1).permute(0, 3, 1, 2)
    return kernel.split([part * r for part in channels], dim=1)


def _dense_kernels_backward(g_kernel: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor, out_orientations: int,
                            rotations: int) -> torch.Tensor:
    """The weight's gradient from the whole kernel's [C_out·R_out, C_in·R_in, 3, 3] (any layout): each
    gathered entry sends its gradient back to its tap."""
    o, c, r, _ = weight.shape
    g = g_kernel.permute(0, 2, 3, 1).reshape(o, out_orientations, _TAPS_3X3, c * r)
    if out_orientations == 1:
        g = (g / rotations).expand(o, ORIENTATIONS, _TAPS_3X3, c * r)
    g_taps = g.new_zeros(o, c * r * 8).index_add_(1, taps, g.reshape(o, -1))
    return g_taps.view(o, c, r, 8)[..., :7]


def _corner_weights(weight: torch.Tensor, corner_expansion: torch.Tensor, rotations: int, channels: Sequence[int]
                    ) -> tuple[torch.Tensor, ...]:
    """The corner rule's [C_out, C_in·(1+R_in)] weights, split by input part: a fixed linear map of the
    taps (one small matmul)."""
    o, c, r, _ = weight.shape
    corner = weight.reshape(o * c, -1) @ corner_expansion.to(weight.dtype)
    if rotations != 1:
        corner = corner / rotations
    return corner.reshape(o, -1).split([part * (1 + r) for part in channels], dim=1)


def _corner_weights_backward(g_corner: torch.Tensor, weight: torch.Tensor, corner_expansion: torch.Tensor,
                             rotations: int) -> torch.Tensor:
    """The weight's gradient from the whole [C_out, C_in·(1+R_in)] corner weights'."""
    o, c = weight.shape[:2]
    g = g_corner.reshape(o * c, -1) @ corner_expansion.to(g_corner.dtype).t()
    return (g / rotations if rotations != 1 else g).view(weight.shape)


def _corner_features(own: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """[B, C·(1+R), NUM_CORNERS]: each corner's own orientation mean, then its neighbours' mean per
    orientation (aligned to the corner), channel by channel."""
    return torch.cat([own[:, :, None], neighbours.mean(-1)], dim=2).flatten(1, 2)


def _patch_rows(patches: torch.Tensor) -> torch.Tensor:
    """[B, C, R, CHART_CORNERS, 9] -> [B, CHART_CORNERS, 9·C·R], one row per corner in the channels-last
    kernel's order (`_kernel_rows`)."""
    return patches.permute(0, 3, 4, 1, 2).flatten(2)


def _kernel_rows(kernel: torch.Tensor) -> torch.Tensor:
    """[C_out·R_out, C_in·R_in, 3, 3] -> [C_out·R_out, 9·C_in·R_in]: a view of a channels-last kernel."""
    return kernel.permute(0, 2, 3, 1).reshape(kernel.shape[0], -1)


def _corner_index(b: int, rows: int, out_corners: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Index of the [B, rows, CHART_CORNERS] chart-corner outputs in the [B·5, rows, H, W] conv output."""
    chart, h, w = out_corners.unbind(1)
    batch_chart = torch.arange(b, device=out_corners.device)[:, None, None] * NUM_CHARTS + chart
    return batch_chart, torch.arange(rows, device=out_corners.device)[:, None], h, w


def _as_planes(t: torch.Tensor) -> torch.Tensor:
    """`t` with exactly `empty_planes`' channels-last strides (what the fake kernels promise)."""
    want = empty_planes(*t.shape, t)
    return t if t.stride() == want.stride() else want.copy_(t)


def _conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, stride: int) -> torch.Tensor:
    """conv2d without padding, as the one aten op it dispatches to (what profilers and tests look for)."""
    return torch.ops.aten.convolution(x, kernel, bias, [stride, stride], [0, 0], [1, 1], False, [0, 0], 1)


def _out_size(size: int, stride: int) -> int:
    return (size - 3) // stride + 1


# The whole layer is one opaque operator for torch.compile, forward and backward: traced, its kernel
# expansion, corner rule and their gradients made a dozen small generated kernels per layer, whose C++
# compilation was most of a model's compile time.
@torch.library.custom_op("icolightning::ico_conv", mutates_args=())
def ico_conv(planes: list[torch.Tensor], patches: list[torch.Tensor], own: list[torch.Tensor],
             neighbours: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, kernel_taps: torch.Tensor,
             corner_expansion: torch.Tensor, out_corners: torch.Tensor, out_orientations: int, rotations: int,
             overwrite_corners: bool, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution of gauge-padded input parts (`planes` [B·5, C_i·R, H+2, W+2] channels-last, each
    with its corner-rule inputs, see `Padded`), their channels concatenated: the output as channels-last
    [B·5, C_out·R_out, H', W'] planes with the corner rule's values at the chart corners, and the poles
    [B, C_out, R_out, 2]. `overwrite_corners` only chooses how the backward takes the corners out."""
    channels = [p.shape[1] for p in patches]
    kernels = _dense_kernels(weight, kernel_taps, out_orientations, rotations, channels)
    corner_weights = _corner_weights(weight, corner_expansion, rotations, channels)
    bias_rows = None if bias is None else bias.repeat_interleave(out_orientations)
    y = _conv(planes[0], kernels[0], bias_rows, stride)
    for part, part_kernel in zip(planes[1:], kernels[1:], strict=True):
        y += _conv(part, part_kernel, None, stride)
    y = _as_planes(y)
    corners = None
    for part_own, part_nb, part_weight in zip(own, neighbours, corner_weights, strict=True):
        product = part_weight @ _corner_features(part_own, part_nb)
        corners = product if corners is None else corners + product
    if bias is not None:
        corners = corners + bias[:, None]
    corners = corners.to(y.dtype)
    b, rows = own[0].shape[0], y.shape[1]
    wanted = corners[:, :, None, :CHART_CORNERS].expand(b, -1, out_orientations, -1).reshape(b, rows, -1)
    y.index_put_(_corner_index(b, rows, out_corners), wanted)  # y is this op's own: overwriting is free
    poles = corners[:, :, None, CHART_CORNERS:].expand(b, -1, out_orientations, -1).contiguous()
    return y, poles


@ico_conv.register_fake
def _(planes, patches, own, neighbours, weight, bias, kernel_taps, corner_expansion, out_corners, out_orientations,
      rotations, overwrite_corners, stride):
    n, _, hp, wp = planes[0].shape
    o = weight.shape[0]
    y = empty_planes(n, o * out_orientations, _out_size(hp, stride), _out_size(wp, stride), planes[0])
    return y, planes[0].new_empty((own[0].shape[0], o, out_orientations, NUM_POLES))


@torch.library.custom_op("icolightning::ico_conv_backward", mutates_args=())
def ico_conv_backward(g_y: torch.Tensor, g_poles: torch.Tensor, planes: list[torch.Tensor],
                      patches: list[torch.Tensor], own: list[torch.Tensor], neighbours: list[torch.Tensor],
                      weight: torch.Tensor, has_bias: bool, planes_grad: list[bool], kernel_taps: torch.Tensor,
                      corner_expansion: torch.Tensor, out_corners: torch.Tensor, out_orientations: int,
                      rotations: int, overwrite_corners: bool, stride: int
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                 torch.Tensor, torch.Tensor]:
    """Gradients of `ico_conv`: of each part's planes (an empty tensor where `planes_grad` says none is
    needed: the conv then skips its input gradient), patches, corner means and neighbours, then of the
    weight and the bias (zeros of [C_out] when there is none).

    The forward overwrote the chart corners' conv outputs, so they send nothing back through the conv:
    the conv's backward runs on the whole output gradient, and what those corners' gradients sent back
    is taken off again through the 3x3 patches around them (the same values, as the padding hands them
    out), which the padding's backward returns to where they came from. On small charts
    (`overwrite_corners`) that costs more multiply-adds than a copy of the output gradient with its
    corners zeroed, which the conv's backward then runs on instead."""
    channels = [p.shape[1] for p in patches]
    kernels = _dense_kernels(weight, kernel_taps, out_orientations, rotations, channels)
    corner_weights = _corner_weights(weight, corner_expansion, rotations, channels)
    r_in = patches[0].shape[2]
    b, rows = own[0].shape[0], g_y.shape[1]
    o = rows // out_orientations
    corner_index = _corner_index(b, rows, out_corners)
    at_corners = g_y[corner_index]  # [B, rows, CHART_CORNERS]
    g_conv = g_y.index_put(corner_index, g_y.new_zeros(())) if overwrite_corners else g_y
    g_corners = torch.cat([at_corners.view(b, o, out_orientations, -1).sum(2), g_poles.sum(2)], dim=-1)
    g_planes, g_patches, g_own, g_nb, g_kernels, g_corner_weights = [], [], [], [], [], []
    g_bias = None
    for k, (part, part_patches, part_own, part_nb, part_kernel, part_weight) in enumerate(
            zip(planes, patches, own, neighbours, kernels, corner_weights, strict=True)):
        g_part, g_kernel, g_bias_part = torch.ops.aten.convolution_backward(
            g_conv, part, part_kernel, [rows] if k == 0 and has_bias else None, [stride, stride], [0, 0], [1, 1],
            False, [0, 0], 1, [planes_grad[k], True, k == 0 and has_bias])
        if g_bias_part is not None:
            g_bias = g_bias_part
        c = part_patches.shape[1]
        if overwrite_corners:
            g_patches.append(torch.zeros_like(part_patches))
        else:
            rows_of_patches = _patch_rows(part_patches)
            per_corner = at_corners.transpose(1, 2).to(part_kernel.dtype)  # [B, CHART_CORNERS, rows]
            g_rows = -(per_corner @ _kernel_rows(part_kernel))
            taken = (per_corner.transpose(1, 2) @ rows_of_patches).sum(0)
            g_kernel = g_kernel - taken.view(rows, 3, 3, -1).permute(0, 3, 1, 2)
            g_patches.append(g_rows.view(b, CHART_CORNERS, 9, c, r_in).permute(0, 3, 4, 1, 2)
                             .to(part_patches.dtype).contiguous())
        features = _corner_features(part_own, part_nb)
        g_corner = g_corners.to(features.dtype)
        g_corner_weights.append(torch.einsum("boj,bkj->ok", g_corner, features))
        g_features = (part_weight.t().to(features.dtype) @ g_corner).view(b, c, 1 + r_in, -1)
        g_own.append(g_features[:, :, 0].contiguous().to(part_own.dtype))
        g_nb.append((g_features[:, :, 1:, :, None] / part_nb.shape[-1]).expand(part_nb.shape).contiguous()
                    .to(part_nb.dtype))
        g_planes.append(_as_planes(g_part) if planes_grad[k] else part.new_empty(0))
        g_kernels.append(g_kernel)
    g_weight = (_dense_kernels_backward(torch.cat(g_kernels, dim=1), weight, kernel_taps, out_orientations, rotations)
                + _corner_weights_backward(torch.cat(g_corner_weights, dim=1), weight, corner_expansion, rotations)
                ).to(weight.dtype)
    if has_bias:
        if not overwrite_corners:
            g_bias = g_bias - at_corners.sum((0, 2))
        g_bias = g_bias.view(o, out_orientations).sum(1) + g_corners.sum((0, 2))
        g_bias = g_bias.to(weight.dtype)
    else:
        g_bias = weight.new_zeros(o)
    return g_planes, g_patches, g_own, g_nb, g_weight, g_bias


@ico_conv_backward.register_fake
def _(g_y, g_poles, planes, patches, own, neighbours, weight, has_bias, planes_grad, kernel_taps, corner_expansion,
      out_corners, out_orientations, rotations, overwrite_corners, stride):
    g_planes = [empty_planes(*p.shape, p) if needed else p.new_empty(0)
                for p, needed in zip(planes, planes_grad, strict=True)]
    return (g_planes, [p.new_empty(p.shape) for p in patches], [p.new_empty(p.shape) for p in own],
            [p.new_empty(p.shape) for p in neighbours], weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[0]))


def _save_conv(ctx, inputs, output) -> None:
    planes, patches, own, neighbours, weight, bias, kernel_taps, corner_expansion, out_corners, *ctx.constants = inputs
    ctx.parts, ctx.has_bias = len(planes), bias is not None
    ctx.planes_grad = [p.requires_grad for p in planes]
    ctx.save_for_backward(*planes, *patches, *own, *neighbours, weight, kernel_taps, corner_expansion, out_corners)


def _conv_grads(ctx, g_y, g_poles):  # autograd materialises the gradient of an unused output as zeros
    saved, n = ctx.saved_tensors, ctx.parts
    parts = [list(saved[k * n:(k + 1) * n]) for k in range(4)]
    weight, kernel_taps, corner_expansion, out_corners = saved[4 * n:]
    g_planes, g_patches, g_own, g_nb, g_weight, g_bias = ico_conv_backward(
        g_y, g_poles, *parts, weight, ctx.has_bias, ctx.planes_grad, kernel_taps, corner_expansion, out_corners,
        *ctx.constants)
    g_planes = [g if needed else None for g, needed in zip(g_planes, ctx.planes_grad, strict=True)]
    return (g_planes, g_patches, g_own, g_nb, g_weight, g_bias if ctx.has_bias else None,
            None, None, None, None, None, None, None)


ico_conv.register_autograd(_conv_grads, setup_context=_save_conv)


OVERWRITE_CORNERS_ABOVE = 8.0
"""Correction multiply-adds per output-gradient element above which a conv's backward zeroes the
corners in a copy of the output gradient instead of correcting through the patches (the crossover
measured with the earlier in-forward correction, docs/performance.md)."""


def _corner_macs_per_pixel(in_columns: int, corners: int, pixels: int) -> float:
    """The correction's multiply-adds (the corner patches [corners, in_columns·9] against the kernel)
    per element of the output gradient the zeroed copy would take, per output column."""
    return corners * in_columns * _TAPS_3X3 / (NUM_CHARTS * pixels)


def _kernel_taps(in_channels: int, in_orientations: int) -> np.ndarray:
    """[6·9·C_in·R_in] index into the weights [C_out, C_in·R_in·8] (7 taps, then a zero slot) laid out
    as (output orientation, 3x3 position, input channel, input orientation): the gathered kernel of an
    output channel is its channels-last [6·3·3, C_in·R_in] block."""
    orient, tap = hex_kernel_pattern(in_orientations)  # [6, R_in, 9] each
    source = (orient * 8 + tap).transpose(0, 2, 1)  # [6, 9, R_in]
    channel = np.arange(in_channels)[None, None, :, None] * (in_orientations * 8)
    return (channel + source[:, :, None, :]).reshape(-1)


def _corner_selection(in_orientations: int) -> np.ndarray:
    """[R_in·9, 1 + R_in] 0/1 matrix from output orientation 0's dense 3x3 kernel to the corner rule's
    weights: column 0 sums the centre taps of all input orientations (they all see the corner's own
    orientation mean); column 1 + r sums, over the 6 directions k, the tap of direction k in the input
    orientation that lines up with neighbour feature r once the neighbour is seen from the corner."""
    select = np.zeros((in_orientations * _TAPS_3X3, 1 + in_orientations))
    select[np.arange(in_orientations) * _TAPS_3X3 + _CENTRE, 0] = 1.0
    for r in range(in_orientations):
        for k in range(ORIENTATIONS):
            select[((r + k + 3) % in_orientations) * _TAPS_3X3 + _TAP_POSITION[k], 1 + r] += 1.0
    return select


def with_estimated_poles(charts: torch.Tensor, pole_neighbours: torch.Tensor) -> IcoSignal:
    """A chart tensor has no poles: give each pole the orientation mean of its 5 neighbours,
    whose (chart, h, w) are `pole_neighbours` [3, 2, 5]."""
    if charts.dim() != 6 or charts.shape[3] != NUM_CHARTS:
        raise ValueError(f"expected a chart tensor [B, C, R, 5, H, W], got {tuple(charts.shape)}")
    b, ch, r = charts.shape[:3]
    c, h, w = pole_neighbours
    means = charts[:, :, :, c, h, w].mean((2, 4))
    return IcoSignal(charts, means[:, :, None, :].expand(b, ch, r, 2))
