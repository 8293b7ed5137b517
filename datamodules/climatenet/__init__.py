"""ClimateNet-layout data: the file schema, the LightningDataModule, and the synthetic generator."""

from datamodules.climatenet.datamodule import ClimateDataModule

__all__ = ["ClimateDataModule"]
