"""The feature container that flows between layers: chart tensors plus the two poles.

The 5 charts hold every vertex but the poles, so a layer that must give the poles a real value
carries them alongside: `charts` [B, C, R, 5, H, W] and `poles` [B, C, R, 2] (north, south).
R is 1 for scalar fields and 6 for regular fields. Charts are stored in the layout of
`icolightning.nn.layout` (channels-last images); layers accept any strides but emit that one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from icolightning.grid import ORIENTATIONS
from icolightning.nn.layout import charts_view, memory, to_layout

REPS = {"scalar": 1, "regular": ORIENTATIONS}


def rep_size(rep: str) -> int:
    if rep not in REPS:
        raise ValueError(f"unknown field representation {rep!r}; expected one of {sorted(REPS)}")
    return REPS[rep]


def level_of(height: int) -> int:
    level = height.bit_length() - 1
    if height != 2**level:
        raise ValueError(f"chart height {height} is not a power of two")
    return level


class Padded(NamedTuple):
    """What a layer reads: the padded buffer and the corner rule's inputs."""

    buf: torch.Tensor
    """[B, C, R, 5, H+2, W+2] padded charts in the layout (`layout.planes` gives the conv input)."""
    patches: torch.Tensor
    """[B, C, R, CHART_CORNERS, 9] padded 3x3 neighbourhoods of the chart corners (row-major)."""
    corner_own: torch.Tensor
    """[B, C, NUM_CORNERS] orientation mean at each corner (the chart corners, then N, S)."""
    corner_neighbours: torch.Tensor
    """[B, C, R, NUM_CORNERS, CORNER_NEIGHBOURS] each corner's neighbours, orientation channels aligned to
    the corner."""


class IcoSignal(NamedTuple):
    charts: torch.Tensor
    poles: torch.Tensor
    padded: Padded | None = None
    """The gauge-padded charts (and corner-rule inputs), when the layer that made the signal wrote its
    charts straight into the interior of the next padded buffer (`charts` is then a view of it):
    every `GaugePad` of the signal's level uses it instead of padding again."""

    @classmethod
    def from_vertices(cls, x: torch.Tensor) -> IcoSignal:
        """[B, C, N] (scalar) or [B, C, R, N] vertex tensor -> signal, charts copied into the layout."""
        if x.dim() == 3:
            x = x.unsqueeze(2)
        if x.dim() != 4:
            raise ValueError(f"expected a vertex tensor [B, C, N] or [B, C, R, N], got {tuple(x.shape)}")
        n_chart = x.shape[-1] - 2
        height = _height_from_count(n_chart)
        charts = x[..., :n_chart].unflatten(-1, (5, height, 2 * height))
        return cls(to_layout(charts), x[..., n_chart:])

    def to_vertices(self) -> torch.Tensor:
        """[B, C, R, N] in canonical vertex order (one copy)."""
        b, c, r = self.charts.shape[:3]
        return torch.cat([self.charts.reshape(b, c, r, -1), self.poles], dim=-1)

    @property
    def level(self) -> int:
        return level_of(self.charts.shape[-2])

    @property
    def orientations(self) -> int:
        return self.charts.shape[2]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> IcoSignal:
        """Apply a pointwise function to charts and poles alike."""
        return IcoSignal(fn(self.charts), fn(self.poles))


def cat_signals(signals: list[IcoSignal]) -> IcoSignal:
    """Concatenate along the channel dimension (U-Net skip connections), built in the layout."""
    charts = charts_view(torch.cat([memory(s.charts) for s in signals], dim=4))
    return IcoSignal(charts, torch.cat([s.poles for s in signals], 1))


def _height_from_count(n_chart: int) -> int:
    quarter = n_chart // 10
    height = round(quarter**0.5)
    if n_chart != 10 * height * height or height != 2 ** (height.bit_length() - 1):
        raise ValueError(f"{n_chart + 2} is not an icosahedral vertex count 10*4^r + 2")
    return height
