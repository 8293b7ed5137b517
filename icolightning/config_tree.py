"""Where the Hydra config tree is, in a checkout and in an installed wheel, and the resolvers it
uses (no heavy imports here: the console scripts compose it before they know whether a job runs)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def find_config_dir() -> str:
    """conf/ inside the installed package (a wheel ships the repository's top-level conf/ as
    icolightning/conf, see setup.py), else conf/ at the top of the checkout (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no Hydra config tree (conf/train.yaml) in {package} or {package.parent}")


CONFIG_DIR = find_config_dir()


def slurm_rank() -> int:
    """This task's rank under srun (SLURM_PROCID), 0 elsewhere (Lightning-launched DDP ranks get
    their own Hydra job name and output subfolder from Lightning)."""
    return int(os.environ.get("SLURM_PROCID", "0"))


def register_resolvers() -> None:
    """`${len:${data.variables}}` lets the model's channel count follow the chosen variables;
    `${rank_zero_only:x}` (x on rank 0, else null) and `${rank_suffix:}` ("" on rank 0, else
    "_rank<N>") keep `.hydra/` and train.log to rank 0 when srun starts every rank alike."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver("rank_zero_only", lambda value: value if slurm_rank() == 0 else None)
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", lambda: f"_rank{slurm_rank()}" if slurm_rank() else "")


register_resolvers()
