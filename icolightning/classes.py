"""The climate segmentation classes: the one table that metrics, plots, events, files and
configs read their ids, names and colours from."""

from __future__ import annotations

from typing import NamedTuple


class ClimateClass(NamedTuple):
    id: int
    short: str
    long: str
    colour: str


CLASSES: tuple[ClimateClass, ...] = (
    ClimateClass(0, "BG", "background", "#ffffff"),
    ClimateClass(1, "TC", "tropical_cyclone", "#d62728"),
    ClimateClass(2, "AR", "atmospheric_river", "#1f77b4"),
)
NUM_CLASSES = len(CLASSES)
CLIMATE_CLASSES: tuple[str, ...] = tuple(c.short for c in CLASSES)
"""Short names in id order: ("BG", "TC", "AR")."""
EVENT_CLASSES: tuple[str, ...] = tuple(c.short for c in CLASSES if c.id > 0)
"""The classes that form events (everything but background)."""
CLASS_NAMES: tuple[str, ...] = tuple(c.long for c in CLASSES)
"""Long names in id order, as written into the files' attributes."""
CLASS_COLOURS: dict[str, str] = {c.short: c.colour for c in CLASSES if c.id > 0}
LABEL_VARIABLE = "LABELS"
"""The label variable of ClimateNet-layout files and of the prediction files."""


def labels_legend() -> str:
    """'0 = background, 1 = tropical cyclone, 2 = atmospheric river' for files' attributes."""
    return ", ".join(f"{c.id} = {c.long.replace('_', ' ')}" for c in CLASSES)


def short_legend() -> str:
    """'0 (BG), 1 (TC) or 2 (AR)' for error messages."""
    names = [f"{c.id} ({c.short})" for c in CLASSES]
    return ", ".join(names[:-1]) + " or " + names[-1]
