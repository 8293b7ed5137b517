"""Where the Hydra config tree is, in a checkout and in an installed wheel (no heavy imports here:
the console scripts read it before they know whether a job will run)."""

from __future__ import annotations

from pathlib import Path


def find_config_dir() -> str:
    """conf/ inside the installed package (a wheel ships the repository's top-level conf/ as
    icolightning/conf, see setup.py), else conf/ at the top of the checkout (editable install)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"no Hydra config tree (conf/train.yaml) in {package} or {package.parent}")


CONFIG_DIR = find_config_dir()
