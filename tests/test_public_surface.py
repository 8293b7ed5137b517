"""DESIGN §3: every public name imports from where it is documented and keeps its documented shape,
and every console script of pyproject.toml resolves to a callable. (That every config composes is
tested in test_configs.py.)"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED_SCRIPTS = {"icolightning-train", "icolightning-eval", "icolightning-predict", "icolightning-regrid",
                      "icolightning-events"}


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_icogrid_and_its_attributes():
    from icolightning.grid import IcoGrid

    grid = IcoGrid(2)
    assert grid.level == 2 and grid.num_vertices == 10 * 4**2 + 2
    assert grid.xyz.shape == (grid.num_vertices, 3) and grid.xyz.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(grid.xyz, axis=1), 1.0)
    assert grid.latlon.shape == (grid.num_vertices, 2) and np.abs(grid.latlon[:, 0]).max() == 90.0
    x = torch.randn(3, grid.num_vertices, dtype=torch.float64)
    charts, poles = grid.to_charts(x)
    assert charts.shape[-3] == 5
    torch.testing.assert_close(grid.to_vertices(charts, poles), x)


def test_models_are_plain_modules():
    from icolightning.models import IcoClassifier, IcoUNet

    for model in (IcoUNet, IcoClassifier):
        assert issubclass(model, nn.Module) and not issubclass(model, L.LightningModule)
        assert _parameters(model)[:3] == ["in_channels", "num_classes", "level"]


def test_regridding_entry_points():
    from datamodules.regrid import ico_to_latlon, latlon_to_ico

    assert _parameters(latlon_to_ico)[:5] == ["values", "lat", "lon", "level", "method"]
    assert inspect.signature(latlon_to_ico).parameters["method"].default == "bilinear"
    assert callable(ico_to_latlon)


def test_find_events():
    from icolightning.events import find_events

    assert _parameters(find_events)[:3] == ["labels", "level", "classes"]
    assert tuple(inspect.signature(find_events).parameters["classes"].default) == (1, 2)


def test_layers_and_the_shipped_equivariance_check():
    from icolightning.nn import IcoConv, check_equivariance

    assert issubclass(IcoConv, nn.Module)
    assert _parameters(IcoConv)[:5] == ["in_channels", "out_channels", "level", "in_rep", "out_rep"]
    assert callable(check_equivariance)


def test_datamodules():
    from datamodules import ClimateDataModule, SphericalMNISTDataModule

    for datamodule in (ClimateDataModule, SphericalMNISTDataModule):
        assert issubclass(datamodule, L.LightningDataModule)
    assert _parameters(ClimateDataModule)[:2] == ["data_dir", "level"]
    assert {"variables", "cache_dir", "batch_size"} <= set(_parameters(ClimateDataModule))


def test_every_console_script_resolves_to_a_callable():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= DOCUMENTED_SCRIPTS
    for name, target in scripts.items():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name
