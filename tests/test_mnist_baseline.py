"""The planar baseline: a plain CNN on the 5 charts, invariant only to rotations that permute charts."""

from __future__ import annotations

import numpy as np
import torch

from icolightning.grid import IcoGrid
from icolightning.models.baselines import PlanarCNN

LEVEL = 3


def test_planar_cnn_shapes_dtypes_and_gradients():
    model = PlanarCNN(2, 7, LEVEL, channels=(4, 8))
    x = torch.randn(3, 2, IcoGrid(LEVEL).num_vertices, dtype=torch.float64, requires_grad=True)
    logits = model.double()(x)
    assert logits.shape == (3, 7) and logits.dtype == torch.float64
    logits.sum().backward()
    charts, poles = IcoGrid(LEVEL).to_charts(x.grad)
    assert charts.abs().sum() > 0 and poles.abs().sum() == 0  # the baseline ignores the poles


def test_planar_cnn_is_not_icosahedrally_invariant():
    grid = IcoGrid(LEVEL)
    torch.manual_seed(0)
    model = PlanarCNN(1, 10, LEVEL, channels=(4, 8)).double().eval()
    x = torch.randn(4, 1, grid.num_vertices, dtype=torch.float64)
    polar = [g for g, rot in enumerate(grid.rotations) if np.isclose(rot[2, 2], 1.0)]
    assert len(polar) == 5  # identity and the 4 turns about the axis that permute whole charts
    out = model(x)
    for g in range(60):
        rotated = model(x[..., grid.rotation_permutations[g]])
        if g in polar:
            torch.testing.assert_close(rotated, out)
        else:
            assert (rotated - out).abs().max() > 1e-3
