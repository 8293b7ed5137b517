"""LightningDataModules and the data pipeline (netCDF reading, regridding, caching, synthetic data)."""

from datamodules.climate import ClimateDataModule

__all__ = ["ClimateDataModule"]
