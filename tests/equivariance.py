"""Helpers for exact-equivariance checks over the 60 icosahedral rotations (DESIGN §4)."""

from __future__ import annotations

import torch

from icolightning.grid import IcoGrid
from icolightning.nn import IcoSignal


def rotate(grid: IcoGrid, x: torch.Tensor, g: int) -> torch.Tensor:
    """x∘g for vertex tensors [..., N] (scalar) or [B, C, 6, N] (regular)."""
    regular = x.dim() == 4 and x.shape[2] == 6
    return grid.rotate(x, g, regular=regular)


def corner_invariant(grid: IcoGrid, x: torch.Tensor) -> torch.Tensor:
    """Regular test inputs with the 12 corners replaced by their orientation mean.

    Not needed by the layers (they read only the mean at corners) but used to check that the
    layers' own outputs have exactly this form.
    """
    out = x.clone()
    out[..., grid.corners] = x[..., grid.corners].mean(-2, keepdim=True)
    return out


def max_equivariance_error(fn, level_in: int, level_out: int, x: torch.Tensor) -> float:
    """max over g of |f(x∘g) - f(x)∘g| / max|f(x)| for a map of vertex tensors."""
    grid_in, grid_out = IcoGrid(level_in), IcoGrid(level_out)
    y = fn(x)
    scale = y.abs().max().clamp_min(1e-300)
    worst = 0.0
    for g in range(60):
        err = (fn(rotate(grid_in, x, g)) - rotate(grid_out, y, g)).abs().max() / scale
        worst = max(worst, err.item())
    return worst


def signal_fn(layer):
    """Wrap a signal -> signal layer as a vertex-tensor map [B, C, R, N] -> [B, C, R, N]."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return layer(IcoSignal.from_vertices(x)).to_vertices()

    return fn
