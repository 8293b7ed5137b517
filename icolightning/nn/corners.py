"""The rule for the 12 corners, where the hexagonal lattice has only 5 neighbours and no frame.

Every layer gives the corners a real, orientation-invariant value computed from the corner's own
orientation mean and its 5 neighbours. Each neighbour's regular feature is first rotated so that
its direction 0 points at the corner; that makes it independent of any frame, and averaging
over the 5 makes it independent of which neighbour is which. One rule serves all 12 corners,
poles included, so every layer stays exactly equivariant on all vertices.
"""

from __future__ import annotations

import torch
from torch import nn

from icolightning.grid import IcoGrid
from icolightning.nn.signal import IcoSignal
from icolightning.nn.tables import corner_table


class CornerNeighbourhood(nn.Module):
    """Gathers what the corner rule reads: own orientation means and aligned neighbour features."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        grid = IcoGrid(level)
        table = corner_table(level)
        n_chart = grid.num_chart_vertices
        height, width = grid.chart_shape
        needed = torch.as_tensor(sorted(set(table.neighbours.ravel().tolist()) | set(table.corners.tolist())))
        chart_ids = needed[needed < n_chart]
        local = {int(v): k for k, v in enumerate(chart_ids.tolist())}
        local.update({n_chart: len(chart_ids), n_chart + 1: len(chart_ids) + 1})
        to_local = torch.tensor([[local[int(v)] for v in row] for row in table.neighbours])
        self.register_buffer("c", chart_ids // (height * width), persistent=False)
        self.register_buffer("h", (chart_ids // width) % height, persistent=False)
        self.register_buffer("w", chart_ids % width, persistent=False)
        self.register_buffer("corner_local", torch.tensor([local[int(v)] for v in table.corners]), persistent=False)
        self.register_buffer("neighbour_local", to_local, persistent=False)
        self.register_buffer("toward", torch.as_tensor(table.toward), persistent=False)
        self.register_buffer("neighbour_is_corner", torch.as_tensor(table.neighbour_is_corner), persistent=False)

    def _values(self, x: IcoSignal) -> torch.Tensor:
        """[B, C, R, V] values of the vertices the rule needs (a few dozen)."""
        return torch.cat([x.charts[:, :, :, self.c, self.h, self.w], x.poles], dim=-1)

    def forward(self, x: IcoSignal) -> tuple[torch.Tensor, torch.Tensor]:
        """(own [B, C, 12], aligned [B, C, R, 12]): own orientation means, mean of aligned neighbours."""
        values = self._values(x)
        r = values.shape[2]
        own = values[..., self.corner_local].mean(2)
        nb = values[..., self.neighbour_local]
        if r > 1:
            orient = (torch.arange(r, device=nb.device)[:, None, None] + self.toward) % r
            aligned = torch.gather(nb, 2, orient.expand(*nb.shape[:2], *orient.shape))
            aligned = torch.where(self.neighbour_is_corner, nb.mean(2, keepdim=True), aligned)
        else:
            aligned = nb
        return own, aligned.mean(-1)

    def neighbour_means(self, x: IcoSignal) -> torch.Tensor:
        """[B, C, 12, 5] orientation means of the 5 neighbours (for pooling)."""
        return self._values(x).mean(2)[..., self.neighbour_local]

    def own_means(self, x: IcoSignal) -> torch.Tensor:
        return self._values(x)[..., self.corner_local].mean(2)


class CornerWriter(nn.Module):
    """Writes [B, C, 12] corner values into chart outputs (10 corners) and returns the poles."""

    def __init__(self, level: int) -> None:
        super().__init__()
        pix = IcoGrid(level).chart_corner_pixels()
        for k, name in enumerate(("c", "h", "w")):
            self.register_buffer(name, torch.as_tensor(pix[:, k]), persistent=False)

    def forward(self, charts: torch.Tensor, corners: torch.Tensor) -> IcoSignal:
        """`charts` [B, C, R, 5, H, W] is modified in place at the 10 chart corners."""
        b, c, r = charts.shape[:3]
        charts[:, :, :, self.c, self.h, self.w] = corners[:, :, None, :10]
        poles = corners[:, :, None, 10:].expand(b, c, r, 2)
        return IcoSignal(charts, poles)
