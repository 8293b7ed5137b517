"""Gauge-equivariant layers on the icosahedron. Features flow as `IcoSignal(charts, poles)`."""

from icolightning.nn.conv import IcoConv
from icolightning.nn.equivariance import EquivarianceError, check_equivariance
from icolightning.nn.padding import GaugePad
from icolightning.nn.signal import IcoSignal, Padded, cat_signals

__all__ = ["EquivarianceError", "GaugePad", "IcoConv", "IcoSignal", "Padded", "cat_signals", "check_equivariance"]
