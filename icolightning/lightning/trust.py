"""What a checkpoint may make this program build.

A checkpoint loads with ``torch.load(weights_only=True)``, so unpickling runs no code; but the task
class it names and the ``_target_`` entries of its hyper-parameters (network, optimiser, scheduler)
are imported and called. Only an allowlist may be: this project's task modules and networks, and
torch's optimisers and LR schedulers (and the packages of your own networks listed in the
environment variable ICOLIGHTNING_TRUSTED_MODULES). Everything is checked, nested arguments included, before
anything is built; a refusal names the target and the file.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn, optim

from icolightning.errors import UntrustedCheckpointError

_SCHEDULERS = (optim.lr_scheduler.LRScheduler, optim.lr_scheduler.ReduceLROnPlateau)
ALLOWED_TARGETS: tuple[tuple[tuple[str, ...], tuple[type, ...]], ...] = (
    (("icolightning.models", "icolightning.models.baselines", "icolightning.nn"), (nn.Module,)),
    (("torch.optim",), (optim.Optimizer, *_SCHEDULERS)),
)
"""(packages, base classes): a `_target_` must be a subclass of one of the bases defined in one of the packages."""
TRUSTED_MODULES_ENV = "ICOLIGHTNING_TRUSTED_MODULES"
"""Comma-separated packages of your own networks (nn.Module subclasses) that checkpoints may name too."""
TASK_PACKAGE = "icolightning.lightning"
# Lightning imports and calls a function named by this hyper-parameter when it is present.
_REFUSED_KEYS = ("_instantiator",)


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _allowed_class(target: str, packages: tuple[str, ...], bases: tuple[type, ...]) -> bool:
    """True when `target` is "module.Class" with the module inside `packages` and the class (defined
    there too, not re-exported from elsewhere) a subclass of `bases`. Only modules inside the
    allowed packages are ever imported."""
    module_name, _, attr = target.rpartition(".")
    if not module_name or not _inside(module_name, packages):
        return False
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(obj, type) and issubclass(obj, bases) and _inside(obj.__module__, packages)


def _targets(value: Any) -> Iterator[Any]:
    """Every `_target_` value (and every refused key) in nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_target_" or key in _REFUSED_KEYS:
                yield item if key == "_target_" else f"{key}={item}"
            else:
                yield from _targets(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _targets(item)


def _rules() -> tuple[tuple[tuple[str, ...], tuple[type, ...]], ...]:
    """The allowlist plus the user's own network packages, named in the environment (not in a checkpoint)."""
    extra = tuple(p.strip() for p in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if p.strip())
    return (*ALLOWED_TARGETS, (extra, (nn.Module,))) if extra else ALLOWED_TARGETS


def check_target(target: Any, path: str | Path) -> None:
    """Raise UntrustedCheckpointError unless `target` names an allowed network, optimiser or scheduler."""
    if isinstance(target, str) and any(_allowed_class(target, *rule) for rule in _rules()):
        return
    raise UntrustedCheckpointError(
        path, f"refusing to build {target!r}: a checkpoint may only name this project's networks and tasks "
        "and torch.optim optimisers and LR schedulers (see README, Trust)")


def check_checkpoint(checkpoint: dict[str, Any], path: str | Path, task_base: type) -> str:
    """Check the task class (a subclass of `task_base` in this project's task package) and every
    `_target_` of a loaded checkpoint; returns the task class name."""
    name = checkpoint.get("icolightning_module", f"{TASK_PACKAGE}.SegmentationModule")
    if not isinstance(name, str) or not _allowed_class(name, (TASK_PACKAGE,), (task_base,)):
        raise UntrustedCheckpointError(
            path, f"refusing to load the module class {name!r}: only the tasks of {TASK_PACKAGE} are allowed")
    for target in _targets(checkpoint.get("hyper_parameters") or {}):
        check_target(target, path)
    return name
