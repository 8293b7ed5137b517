"""ClimateNet-layout data: the file schema, the LightningDataModule, and the synthetic generator.

The datamodule is exported by `datamodules` (imported on first use there)."""
