"""Hydra glue shared by the entry points and tests: resolvers, primitives, object builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf


def to_primitive(value: Any) -> Any:
    """OmegaConf containers → plain dicts/lists (resolved), so checkpoints load with weights_only."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: to_primitive(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_primitive(v) for v in value]
    return value


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers).

    Entries set to null are skipped, so an experiment can drop an object with `callbacks.x=null`.
    """
    if not cfg:
        return []
    return [hydra.utils.instantiate(entry) for entry in cfg.values() if entry and "_target_" in entry]


def instantiate_module(cfg: DictConfig, **overrides: Any) -> Any:
    """Build a LightningModule whose nested configs (net, optimizer, ...) stay plain dicts.

    The module instantiates its own network from the dict, so the very same primitives end up
    in the checkpoint's hyper-parameters and rebuild the network at load time.
    """
    return hydra.utils.instantiate(cfg, _recursive_=False, _convert_="all", **overrides)
