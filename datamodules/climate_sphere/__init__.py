"""The papers' level-5 climate dataset (Jiang et al. 2019, "climate_sphere_l5"): files, mesh order,
the LightningDataModule and a synthetic stand-in."""

from datamodules.climate_sphere.datamodule import ClimateSphereDataModule

__all__ = ["ClimateSphereDataModule"]
