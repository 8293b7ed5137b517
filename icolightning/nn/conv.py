"""IcoConv: the gauge-equivariant hexagonal convolution (p6 group convolution per chart).

A filter has 7 taps (centre + 6 hex neighbours) per (out channel, in channel, in orientation).
Output orientation i uses the taps rotated by i·60° and the input orientation channels shifted
by i. The taps are gathered into a dense channels-last (C_out·R_out, C_in·R_in, 3, 3) kernel by one
precomputed index, and the whole layer is one conv2d over the gauge-padded charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icolightning.grid import CHART_CORNERS, HEX_OFFSETS, NUM_CHARTS, ORIENTATIONS, IcoGrid
from icolightning.nn.layout import charts_view, planes
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal, Padded, rep_size
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
        return self._kernels([self.in_channels])[0]

    def _kernels(self, channels: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The channels-last conv2d kernel, split by input part (`channels` input channels each),
        gathered from the 7-tap weights and a zero slot (the two taps a hexagon lacks): a gather, not a
        matmul with a 0/1 matrix, and channels-last like the charts, so conv2d reorders neither the
        kernel nor its gradient (a split part is a strided view, which conv2d copies)."""
        o, r = self.out_channels, self.in_orientations
        taps = torch.nn.functional.pad(self.weight, (0, 1)).reshape(o, -1)
        dense = taps.index_select(1, self.kernel_taps).view(o, ORIENTATIONS, _TAPS_3X3, -1)
        if self.out_orientations == 1:
            dense = dense.sum(1, keepdim=True) / self._rotations
        kernel = dense.view(o * self.out_orientations, 3, 3, -1).permute(0, 3, 1, 2)
        return kernel.split([part * r for part in channels], dim=1)

    def _corner_weights(self, channels: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The corner rule's [C_out, C_in·(1+R_in)] weights, split by input part: a fixed linear map of
        the taps (one small matmul)."""
        o, c = self.out_channels, self.in_channels
        corner = self.weight.reshape(o * c, -1) @ self.corner_expansion.to(self.weight.dtype)
        if self._rotations != 1:
            corner = corner / self._rotations
        return corner.reshape(o, -1).split([part * (1 + self.in_orientations) for part in channels], dim=1)

    def _corner_outputs(self, padded: Sequence[Padded], corner_weight: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, C_out, NUM_CORNERS]: output orientation 0's taps summed over the 6 directions, each applied
        to the mean of the corner's neighbours after rotating them to be relative to the corner; the
        rule is linear in the input, so a split input adds up its parts' products."""
        out = None
        for part, weight in zip(padded, corner_weight, strict=True):
            features = torch.cat([part.corner_own[:, :, None], part.corner_neighbours.mean(-1)], dim=2)
            product = weight @ features.flatten(1, 2)
            out = product if out is None else out + product
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out

    def forward(self, x: IcoSignal | torch.Tensor | Sequence[IcoSignal]) -> IcoSignal | torch.Tensor:
        """`x` may be a sequence of signals: the layer applied to their channel concatenation, without
        building it (U-Net skips). The layer is linear in its input, so each part gets its slice of the
        kernel (by input channel) and its own padded buffer (the one a fused norm wrote, if any), and
        the parts' convolutions add up into one output."""
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
        channels = [s.charts.shape[1] for s in parts]
        kernels, corner_weights = self._kernels(channels), self._corner_weights(channels)
        bias = None if self.bias is None else self.bias.repeat_interleave(self.out_orientations)
        y = F.conv2d(planes(padded[0].buf), kernels[0], bias, stride=self.stride)
        for part, part_kernel in zip(padded[1:], kernels[1:], strict=True):
            y += F.conv2d(planes(part.buf), part_kernel, stride=self.stride)

        corners = self._corner_outputs(padded, corner_weights).to(y.dtype)
        rows = self.out_channels * self.out_orientations
        wanted = corners[:, :, None, :CHART_CORNERS].expand(b, -1, self.out_orientations, -1).reshape(b, rows, -1)
        chart, h, w = self.out_corners.unbind(1)
        batch_chart = torch.arange(b, device=y.device)[:, None, None] * 5 + chart
        index = (batch_chart, torch.arange(rows, device=y.device)[:, None], h, w)
        if torch.compiler.is_compiling():
            # Inductor miscompiles the accumulating form below (wrong corner values for scalar
            # outputs, torch 2.13); a plain overwrite is correct there and its copy gets fused.
            y = y.index_put(index, wanted)
        elif self._overwrite_corners:
            # Small charts: the corner pixels' raw conv values (below) would cost more multiply-adds
            # than the overwrite's backward costs in copying the output gradient.
            y.index_put_(index, wanted.to(y.dtype))
        else:
            # Adding (wanted - conv output) instead of overwriting keeps backward free: the
            # gradient of an accumulate is the identity, an overwrite would clone it.
            # A matmul with a view of the kernel, so autograd saves the storage conv2d saves anyway.
            raw = None
            for part, part_kernel in zip(padded, kernels, strict=True):
                patches = part.patches.permute(0, 3, 4, 1, 2).flatten(2)  # [B, corners, 9·C·R]
                product = patches @ part_kernel.permute(0, 2, 3, 1).reshape(rows, -1).t()
                raw = product if raw is None else raw + product
            raw = raw.transpose(1, 2)
            if bias is not None:
                raw = raw + bias[:, None]
            y.index_put_(index, (wanted - raw).to(y.dtype), accumulate=True)

        charts = charts_view(y.permute(0, 2, 3, 1).reshape(b, NUM_CHARTS, *y.shape[-2:], self.out_channels, -1))
        poles = corners[:, :, None, CHART_CORNERS:].expand(b, -1, self.out_orientations, -1).contiguous()
        return charts if plain else IcoSignal(charts, poles)


OVERWRITE_CORNERS_ABOVE = 8.0
"""Corner-rule multiply-adds per output-gradient element above which a conv overwrites its corner
pixels instead of adding a correction (measured crossover, docs/performance.md)."""


def _corner_macs_per_pixel(in_columns: int, corners: int, pixels: int) -> float:
    """The correction's multiply-adds (its raw conv values at the chart corners, [corners, in_columns·9]
    against the kernel) per element of the output gradient an overwrite would copy, per output column."""
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
