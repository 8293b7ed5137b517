"""The papers' level-5 climate dataset (Jiang et al. 2019, "climate_sphere_l5"): files, mesh order,
the LightningDataModule and a synthetic stand-in.

The datamodule is exported by `datamodules` (imported on first use there)."""
