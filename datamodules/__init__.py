"""LightningDataModules and the data pipeline: reading (io), regridding (regrid), caching (cache),
and one folder per dataset (climatenet, climate_sphere, mnist)."""

from datamodules.climate_sphere import ClimateSphereDataModule
from datamodules.climatenet import ClimateDataModule
from datamodules.mnist import SphericalMNISTDataModule

__all__ = ["ClimateDataModule", "ClimateSphereDataModule", "SphericalMNISTDataModule"]
