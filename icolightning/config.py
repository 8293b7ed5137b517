"""Hydra glue: where the config tree is (in a checkout and in an installed wheel), the resolvers
it uses, and the builders that turn config nodes into objects and plain values.

No heavy imports here: the console scripts compose the config before they know whether a job runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from icolightning.distributed import launcher_rank_and_world


def find_config_dir() -> str:
    """conf/ inside the installed package (a wheel ships the repository's top-level conf/ as
    icolightning/conf, see setup.py), else conf/ at the top of the checkout (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no Hydra config tree (conf/train.yaml) in {package} or {package.parent}")


CONFIG_DIR = find_config_dir()


def _launcher_rank() -> int:
    return launcher_rank_and_world()[0]


def register_resolvers() -> None:
    """`${len:${data.variables}}` lets the model's channel count follow the chosen variables;
    `${rank_zero_only:x}` (x on rank 0, else null) and `${rank_suffix:}` ("" on rank 0, else
    "_rank<N>") keep `.hydra/` and train.log to rank 0 when srun or torchrun starts every rank alike
    (the rank is the launcher's, see `icolightning.distributed`: the config is composed before any
    process group exists, and Lightning-launched ranks get their own Hydra job name and folder)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver("rank_zero_only", lambda value: value if _launcher_rank() == 0 else None)
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", lambda: f"_rank{_launcher_rank()}" if _launcher_rank() else "")


register_resolvers()


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
