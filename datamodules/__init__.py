"""LightningDataModules and the data pipeline (netCDF reading, regridding, caching, synthetic data)."""

from datamodules.climate import ClimateDataModule
from datamodules.climate_sphere import ClimateSphereDataModule
from datamodules.mnist import SphericalMNISTDataModule as SphericalMNISTDataModule

__all__ = ["ClimateDataModule", "ClimateSphereDataModule", "SphericalMNISTDataModule"]
