"""Exact-equivariance checks over the 60 rotations of the icosahedron, for any layer or model.

The rotations come from the grid's own corners and act as exact vertex permutations (with the
per-point cyclic shift for regular features), so in float64 an equivariant map agrees with its
rotated self to round-off. Tests, `scripts/gpu_check.py` and users writing their own layers call
the same `check_equivariance`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from icolightning.grid import ORIENTATIONS, IcoGrid, level_of
from icolightning.nn.signal import IcoSignal

NUM_ROTATIONS = 60
VertexMap = Callable[[torch.Tensor], torch.Tensor]


class EquivarianceError(AssertionError):
    """A map that is not equivariant to within the tolerance asked for."""


def rotate(grid: IcoGrid, x: torch.Tensor, g: int) -> torch.Tensor:
    """x∘g for vertex tensors [..., N] (scalar) or [B, C, 6, N] (regular)."""
    regular = x.dim() == 4 and x.shape[2] == ORIENTATIONS
    return grid.rotate(x, g, regular=regular)


def corner_invariant(grid: IcoGrid, x: torch.Tensor) -> torch.Tensor:
    """Regular features with the 12 corners replaced by their orientation mean: the form every
    layer's output takes at the corners (their rule is the same for all 12)."""
    out = x.clone()
    out[..., grid.corners] = x[..., grid.corners].mean(-2, keepdim=True)
    return out


def signal_fn(layer: nn.Module) -> VertexMap:
    """A layer on `IcoSignal`s as a map of vertex tensors [B, C, R, N] -> [B, C', R', N']."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return layer(IcoSignal.from_vertices(x)).to_vertices()

    return fn


def max_equivariance_error(fn: VertexMap, level_in: int, level_out: int, x: torch.Tensor) -> float:
    """max over the 60 g of |f(x∘g) - f(x)∘g| / max|f(x)|; an output without a vertex axis of
    level `level_out` (a classifier's [B, K]) is checked for invariance, |f(x∘g) - f(x)|."""
    grid_in, grid_out = IcoGrid(level_in), IcoGrid(level_out)
    y = fn(x)
    invariant = y.shape[-1] != grid_out.num_vertices
    scale = y.abs().max().clamp_min(1e-300)
    worst = 0.0
    for g in range(NUM_ROTATIONS):
        expected = y if invariant else rotate(grid_out, y, g)
        worst = max(worst, ((fn(rotate(grid_in, x, g)) - expected).abs().max() / scale).item())
    return worst


def random_input(level: int, channels: int, rep: str | None, batch: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Random vertex tensor: [B, C, N] for a model (rep None), [B, C, R, N] for a layer; regular
    inputs are corner-invariant, as every layer's regular output is."""
    grid = IcoGrid(level)
    orientations = {None: 0, "scalar": 1, "regular": ORIENTATIONS}[rep]
    shape = (batch, channels, *((orientations,) if orientations else ()), grid.num_vertices)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    return corner_invariant(grid, x) if rep == "regular" else x


def check_equivariance(
    module: nn.Module,
    level: int,
    in_channels: int,
    in_rep: str | None = None,
    level_out: int | None = None,
    tolerance: float | None = 1e-10,
    x: torch.Tensor | None = None,
) -> float:
    """The worst relative equivariance error of `module` over the 60 rotations, on every vertex.

    `in_rep=None`: a model on vertex tensors [B, C, N] (segmentation logits [B, K, N] are checked
    for equivariance, a classifier's [B, K] for invariance); `"scalar"`/`"regular"`: a layer on
    `IcoSignal`s. `level_out` defaults to the output's own level (pooling and upsampling change
    it). The input is random float64 unless `x` is given; the module keeps its mode and dtype, so
    call `.double()` for round-off-level errors. Raises EquivarianceError above `tolerance`.
    """
    if x is None:
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else None
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float64
        x = random_input(level, in_channels, in_rep, dtype=dtype, device=device)
    fn = module if in_rep is None else signal_fn(module)
    with torch.no_grad():
        if level_out is None:
            out = fn(x)
            level_out = level_of(out.shape[-1]) if out.dim() > 2 else level
        error = max_equivariance_error(fn, level, level_out, x)
    if tolerance is not None and not error <= tolerance:
        raise EquivarianceError(f"{type(module).__name__}: relative equivariance error {error:.3g} over the "
                                f"{NUM_ROTATIONS} rotations exceeds {tolerance:.3g}")
    return error
