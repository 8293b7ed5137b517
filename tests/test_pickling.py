"""Models pickle and deep-copy (ddp_spawn, EMA/SWA callbacks, torch.save(model)): IcoGrid, held by
the planar baseline, travels as its level and comes back as the receiving process's one instance."""

from __future__ import annotations

import copy
import io
import pickle

import torch

from icolightning.grid import IcoGrid
from icolightning.models.baselines import PlanarCNN


def test_icogrid_pickles_and_copies_as_its_level():
    grid = IcoGrid(2)
    assert pickle.loads(pickle.dumps(grid)) is grid
    assert copy.deepcopy(grid) is grid and copy.copy(grid) is grid
    assert pickle.loads(pickle.dumps(IcoGrid(3))).num_vertices == 642


def test_planar_baseline_deep_copies_and_saves_whole():
    torch.manual_seed(0)
    model = PlanarCNN(1, 10, 2, channels=[2, 4]).eval()
    x = torch.randn(2, 1, IcoGrid(2).num_vertices)
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # our own object, as EMA/SWA and ddp_spawn do
    for other in (twin, loaded):
        assert other.grid is model.grid
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
