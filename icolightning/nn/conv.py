"""IcoConv: the gauge-equivariant hexagonal convolution (p6 group convolution per chart).

A filter has 7 taps (centre + 6 hex neighbours) per (out channel, in channel, in orientation).
Output orientation i uses the taps rotated by i·60° and the input orientation channels shifted
by i. The taps are expanded into a dense (C_out·R_out, C_in·R_in, 3, 3) kernel through a
precomputed index, and the whole layer is one conv2d over the gauge-padded charts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from icolightning.grid import HEX_OFFSETS, ORIENTATIONS
from icolightning.nn.corners import CornerNeighbourhood, CornerWriter
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal, level_of, rep_size
from icolightning.nn.tables import hex_kernel_pattern

_CENTRE = 4
_TAP_POSITION = [(dh + 1) * 3 + (dw + 1) for dh, dw in HEX_OFFSETS]


class IcoConv(nn.Module):
    """Gauge-equivariant convolution on level-`level` charts.

    Reps: "scalar" (R=1) or "regular" (R=6) for input and output. A scalar output is the
    orientation average of the regular response, i.e. a learned invariant map. `stride=2`
    evaluates the layer at the level-(r-1) vertices (even chart coordinates): a downsampling
    convolution. Input is an `IcoSignal`, or a plain chart tensor [B, C, R, 5, H, W] whose
    poles are then taken as the mean of their 5 neighbours (a plain tensor has no poles).
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
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.in_orientations, 7))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        orient, tap = hex_kernel_pattern(self.in_orientations)
        self.register_buffer("pattern_orient", torch.as_tensor(orient), persistent=False)
        self.register_buffer("pattern_tap", torch.as_tensor(tap), persistent=False)
        r_in = self.in_orientations
        rolled = [[(r + k + 3) % r_in for k in range(ORIENTATIONS)] for r in range(r_in)]
        self.register_buffer("corner_orient", torch.tensor(rolled), persistent=False)
        self.register_buffer("corner_pos", torch.tensor(_TAP_POSITION), persistent=False)
        self.pad = GaugePad(level)
        self.corner_inputs = CornerNeighbourhood(level)
        self.corner_writer = CornerWriter(level - stride + 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.in_orientations * 7
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}x{self.in_rep} -> {self.out_channels}x{self.out_rep}, level={self.level}, "
                f"stride={self.stride}, bias={self.bias is not None}")

    def dense_kernel(self) -> torch.Tensor:
        """[C_out·R_out, C_in·R_in, 3, 3] conv2d kernel from the 7-tap weights."""
        zero_tap = F.pad(self.weight, (0, 1))
        kernel = zero_tap[:, :, self.pattern_orient, self.pattern_tap].transpose(1, 2)
        if self.out_orientations == 1:
            kernel = kernel.mean(1, keepdim=True)
        return kernel.reshape(self.out_channels * self.out_orientations, -1, 3, 3)

    def _corner_outputs(self, x: IcoSignal, kernel: torch.Tensor) -> torch.Tensor:
        """[B, C_out, 12]: the layer as it would act on a neighbourhood that looks like its average.

        Output orientation 0's taps are summed over the 6 directions after rotating each
        neighbour's channels so they are relative to the direction of the corner.
        """
        own, aligned = self.corner_inputs(x)
        k0 = kernel.view(self.out_channels, self.out_orientations, self.in_channels, self.in_orientations, 9)[:, 0]
        centre = k0[..., _CENTRE].sum(-1)
        ring = k0[:, :, self.corner_orient, self.corner_pos].sum(-1)
        out = torch.einsum("oc,bcj->boj", centre, own) + torch.einsum("ocr,bcrj->boj", ring, aligned)
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out

    def forward(self, x: IcoSignal | torch.Tensor) -> IcoSignal | torch.Tensor:
        plain = isinstance(x, torch.Tensor)
        signal = with_estimated_poles(x, self.corner_inputs) if plain else x
        if signal.orientations != self.in_orientations or signal.charts.shape[1] != self.in_channels:
            raise ValueError(f"{self.__class__.__name__}({self.extra_repr()}) got charts of shape "
                             f"{tuple(signal.charts.shape)}")
        buf = self.pad(signal)
        b, _, c_in, r_in, hp, wp = buf.shape
        kernel = self.dense_kernel()
        bias = None if self.bias is None else self.bias.repeat_interleave(self.out_orientations)
        y = F.conv2d(buf.view(b * 5, c_in * r_in, hp, wp), kernel, bias, stride=self.stride)
        charts = y.view(b, 5, self.out_channels, self.out_orientations, *y.shape[-2:]).permute(0, 2, 3, 1, 4, 5)
        out = self.corner_writer(charts, self._corner_outputs(signal, kernel))
        return out.charts if plain else out


def with_estimated_poles(charts: torch.Tensor, neighbourhood: CornerNeighbourhood) -> IcoSignal:
    """A chart tensor has no poles: give each pole the orientation mean of its 5 neighbours."""
    if charts.dim() != 6 or charts.shape[3] != 5 or level_of(charts.shape[-2]) != neighbourhood.level:
        raise ValueError(f"expected a chart tensor [B, C, R, 5, H, W] at level {neighbourhood.level}, "
                         f"got {tuple(charts.shape)}")
    b, c, r = charts.shape[:3]
    placeholder = charts.new_zeros(b, c, r, 2)
    nb_means = neighbourhood.neighbour_means(IcoSignal(charts, placeholder))[..., 10:, :].mean(-1)
    return IcoSignal(charts, nb_means[:, :, None, :].expand(b, c, r, 2))
