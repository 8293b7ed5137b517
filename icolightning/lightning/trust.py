"""What a checkpoint may make this program build: a checkpoint is data, never code.

A checkpoint loads with ``torch.load(weights_only=True)``, so unpickling runs no code; but the task
class it names and the ``_target_`` entries of its hyper-parameters (network, optimiser, scheduler)
are imported and called. `validated_arguments` turns the loaded file into the one plain structure
the task is built from, and refuses (UntrustedCheckpointError, naming the file) before anything is
built when:

- the task class is not one of this project's tasks, or an argument is not one of its parameters;
- the file carries the legacy hyper-parameter keys Lightning would merge into the arguments;
- any string or key contains ``${`` (OmegaConf would resolve it when the network is instantiated);
- any nested dict, list or tuple holds a Hydra/Lightning instruction key (``_args_``, ``_partial_``,
  ``_recursive_``, ``_convert_``, ``_instantiator``, ...) or a ``_target_`` off the allowlist: this
  project's networks, torch's optimisers and LR schedulers, and the packages of your own networks
  listed in the environment variable ICOLIGHTNING_TRUSTED_MODULES;
- a built class would get an argument it does not take, or a size outside `ARGUMENT_LIMITS`.

Module paths of classes that moved (`LEGACY_TARGETS`) are rewritten to their new home.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn, optim

from icolightning.errors import UntrustedCheckpointError
from icolightning.grid import MAX_LEVEL

_SCHEDULERS = (optim.lr_scheduler.LRScheduler, optim.lr_scheduler.ReduceLROnPlateau)
ALLOWED_TARGETS: tuple[tuple[tuple[str, ...], tuple[type, ...]], ...] = (
    (("icolightning.models", "icolightning.models.baselines", "icolightning.nn"), (nn.Module,)),
    (("torch.optim",), (optim.Optimizer, *_SCHEDULERS)),
)
"""(packages, base classes): a `_target_` must be a subclass of one of the bases defined in one of the packages."""
TRUSTED_MODULES_ENV = "ICOLIGHTNING_TRUSTED_MODULES"
"""Comma-separated packages of your own networks (nn.Module subclasses) that checkpoints may name too."""
TASK_PACKAGE = "icolightning.lightning"
LEGACY_HPARAMS_KEYS = ("module_arguments", "hparams")
"""Keys of old Lightning checkpoints that `load_from_checkpoint` merges into the constructor arguments."""
LEGACY_TARGETS = {
    "icolightning.baselines.PlanarCNN": "icolightning.models.baselines.PlanarCNN",
}
"""Classes checkpoints written before the redesign name, and where they live now."""
ARGUMENT_LIMITS: dict[str, tuple[float, float]] = {
    "level": (0, MAX_LEVEL), "in_channels": (1, 4096), "num_classes": (1, 4096), "widths": (1, 4096),
    "channels": (1, 4096), "hidden": (1, 65536), "convs_per_stage": (1, 16), "dropout": (0.0, 1.0),
    "ap_bins": (2, 100_000),
}
"""Inclusive ranges of the size arguments (each item of a list) of whatever a checkpoint builds."""
MAX_DEPTH = 8
"""Most stages (items of `widths` / `channels`) a network from a checkpoint may have."""
SCHEDULER_KEYS = ("interval", "monitor")
"""Keys of a scheduler config that the task reads itself (`IcoTask._scheduler_config`), not the class."""
COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")
"""`compile` values other than a bool that a checkpoint may ask for."""


def _refuse(path: str | Path, problem: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(path, f"{problem} (see docs/checkpoints.md)")


def _inside(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _allowed_class(target: str, packages: tuple[str, ...], bases: tuple[type, ...]) -> type | None:
    """The class `target` ("module.Class") when its module is inside `packages` and the class (defined
    there too, not re-exported from elsewhere) subclasses `bases`. Only allowed modules are imported."""
    module_name, _, attr = target.rpartition(".")
    if not module_name or not _inside(module_name, packages):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    ok = isinstance(obj, type) and issubclass(obj, bases) and _inside(obj.__module__, packages)
    return obj if ok else None


def _rules() -> tuple[tuple[tuple[str, ...], tuple[type, ...]], ...]:
    """The allowlist plus the user's own network packages, named in the environment (not in a checkpoint)."""
    extra = tuple(p.strip() for p in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if p.strip())
    return (*ALLOWED_TARGETS, (extra, (nn.Module,))) if extra else ALLOWED_TARGETS


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(location, value) of every container and scalar nested in `value` (dict keys included)."""
    yield where, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.<key>", key
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")


def _check_arguments(cls: type, args: dict[str, Any], where: str, path: str | Path) -> None:
    """The arguments a checkpoint passes to `cls` are parameters it takes, with sizes in range."""
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    own_keys = SCHEDULER_KEYS if issubclass(cls, _SCHEDULERS) else ()
    for name, value in args.items():
        if name not in params and name not in own_keys and not takes_any:
            raise _refuse(path, f"refusing {where}.{name}: {cls.__qualname__} takes no argument {name!r}")
        if name in ("widths", "channels") and isinstance(value, list | tuple) and len(value) > MAX_DEPTH:
            raise _refuse(path, f"refusing {where}.{name}: {len(value)} stages (at most {MAX_DEPTH})")
        low, high = ARGUMENT_LIMITS.get(name, (None, None))
        items = value if isinstance(value, list | tuple) else [value]
        for item in items if low is not None else ():
            number = isinstance(item, int | float) and not isinstance(item, bool)
            if not number or not low <= item <= high:
                raise _refuse(path, f"refusing {where}.{name}={value!r}: must be numbers in [{low}, {high}]")


def _checked_target(node: dict[str, Any], where: str, path: str | Path) -> dict[str, Any]:
    """`node` with its `_target_` mapped from a legacy path, refused unless allowed, arguments checked."""
    target = LEGACY_TARGETS.get(node["_target_"], node["_target_"])
    cls = next((c for rule in _rules() if isinstance(target, str) and (c := _allowed_class(target, *rule))), None)
    if cls is None:
        raise _refuse(path, f"refusing to build {target!r} ({where}): a checkpoint may only name this project's "
                            "networks and tasks and torch.optim optimisers and LR schedulers")
    args = {k: v for k, v in node.items() if k != "_target_"}
    _check_arguments(cls, args, where, path)
    return {"_target_": target, **args}


def _plain(value: Any, where: str, path: str | Path) -> Any:
    """A copy of `value` as plain dicts and lists with every `_target_` checked (and legacy paths mapped)."""
    if isinstance(value, dict):
        node = {key: _plain(item, f"{where}.{key}", path) for key, item in value.items()}
        return _checked_target(node, where, path) if "_target_" in node else node
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]", path) for i, item in enumerate(value)]
    return value


def _refuse_instructions(hparams: dict[str, Any], path: str | Path) -> None:
    """No interpolation, no non-string key, no instruction key other than `_target_`, anywhere."""
    for where, value in _walk(hparams, "hyper_parameters"):
        if where.endswith(".<key>"):
            if not isinstance(value, str):
                raise _refuse(path, f"refusing {where[:-6]}: key {value!r} is not a string")
            if value == "_instantiator" or (value != "_target_" and value.startswith("_") and value.endswith("_")):
                raise _refuse(path, f"refusing {where[:-6]}.{value}: a checkpoint may not pass {value} instructions")
        if isinstance(value, str) and "${" in value:
            raise _refuse(path, f"refusing {where}={value!r}: a checkpoint's strings are never interpolated")


def task_class(checkpoint: dict[str, Any], path: str | Path, task_base: type) -> type:
    """The task class the checkpoint names: a subclass of `task_base` in this project's task package."""
    name = checkpoint.get("icolightning_module", f"{TASK_PACKAGE}.SegmentationModule")
    cls = _allowed_class(name, (TASK_PACKAGE,), (task_base,)) if isinstance(name, str) else None
    if cls is None:
        raise _refuse(path, f"refusing to load the module class {name!r}: only the tasks of {TASK_PACKAGE} are allowed")
    return cls


def validated_arguments(checkpoint: dict[str, Any], path: str | Path, task_base: type) -> tuple[type, dict[str, Any]]:
    """The task class and its constructor arguments, as one checked plain structure (see module doc)."""
    cls = task_class(checkpoint, path, task_base)
    legacy = [key for key in LEGACY_HPARAMS_KEYS if key in checkpoint]
    if legacy:
        raise _refuse(path, f"refusing the legacy hyper-parameter key(s) {legacy}: constructor arguments come "
                            "from hyper_parameters only")
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        raise _refuse(path, "refusing hyper_parameters that are not a dict")
    _refuse_instructions(hparams, path)
    args = _plain(hparams, "hyper_parameters", path)
    _check_arguments(cls, args, "hyper_parameters", path)
    compile_option = args.get("compile", False)
    if not isinstance(compile_option, bool) and compile_option not in COMPILE_BACKENDS:
        raise _refuse(path, f"refusing compile={compile_option!r}: a bool or one of {COMPILE_BACKENDS}")
    return cls, args
