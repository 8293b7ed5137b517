"""LightningDataModules and the data pipeline: reading (io), regridding (regrid), caching (cache),
and one folder per dataset (climatenet, climate_sphere, mnist).

The datamodules are imported on first use (PEP 562), so that the tools needing only `regrid` or
`io` (`icolightning-regrid`, its usage errors and `--help`) do not pay for importing Lightning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamodules.climate_sphere.datamodule import ClimateSphereDataModule
    from datamodules.climatenet.datamodule import ClimateDataModule
    from datamodules.mnist.datamodule import SphericalMNISTDataModule

_HOMES = {
    "ClimateDataModule": "datamodules.climatenet.datamodule",
    "ClimateSphereDataModule": "datamodules.climate_sphere.datamodule",
    "SphericalMNISTDataModule": "datamodules.mnist.datamodule",
}
__all__ = ["ClimateDataModule", "ClimateSphereDataModule", "SphericalMNISTDataModule"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
