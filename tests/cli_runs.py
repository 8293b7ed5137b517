"""Helpers for tests that run the entry points: compose a config as the console scripts would
(in-process runs), and run a console script in a subprocess (DDP ranks, real command lines)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from icolightning.config import CONFIG_DIR

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent


def compose_config(name: str, root: Path, run: str, overrides: list[str]):
    """The config of entry point `name` with its run folder root/run, registered with Hydra."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, return_hydra_config=True,
                      overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/{run}", *overrides])
    HydraConfig.instance().set_config(cfg)
    return cfg


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with tests/ added to (never replacing) PYTHONPATH, so that a
    subprocess imports the checkout under test and the tests' own callbacks."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path} | extra


def run_cli(script: str, args: list[str], cwd: Path, timeout: int = 240,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a console script; tests/ is importable in it (and in the DDP ranks it launches)."""
    env = subprocess_env(PYTHONWARNINGS="ignore") | (extra_env or {})
    return subprocess.run([str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
