"""Gauge-equivariant layers on the icosahedron. Features flow as `IcoSignal(charts, poles)`."""

from icolightning.nn.conv import IcoConv
from icolightning.nn.padding import GaugePad, Padded
from icolightning.nn.signal import IcoSignal, cat_signals

__all__ = ["GaugePad", "IcoConv", "IcoSignal", "Padded", "cat_signals"]
