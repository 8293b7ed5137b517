"""`icolightning.distributed.rank_and_world`: the process group when there is one, else the
launcher's variables (torchrun's before srun's), and (0, 1) for code that needs a real group."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from omegaconf import OmegaConf

import icolightning.config  # noqa: F401  (registers the rank resolvers)
from datamodules.samplers import evaluation_sampler
from icolightning.distributed import launcher_rank_and_world, rank_and_world

LAUNCHER = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_launcher_no_group(clean_env):
    assert launcher_rank_and_world() == (0, 1)
    assert rank_and_world() == (0, 1)


def test_srun_variables(clean_env):
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    assert rank_and_world() == (3, 4)
    assert rank_and_world(environment=False) == (0, 1)
    assert OmegaConf.create({"log": "train${rank_suffix:}", "sub": "${rank_zero_only:.hydra}"}) == {
        "log": "train_rank3", "sub": None}


def test_torchrun_variables_come_first(clean_env):
    clean_env.setenv("SLURM_PROCID", "3")
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (1, 2)


def test_lightning_launcher_variables_are_not_a_rank(clean_env):
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    assert rank_and_world() == (0, 1)


def test_process_group_wins_over_the_environment(clean_env, tmp_path):
    clean_env.setenv("RANK", "5")
    clean_env.setenv("WORLD_SIZE", "8")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert rank_and_world() == (0, 1)
        assert rank_and_world(environment=False) == (0, 1)
        assert evaluation_sampler(range(3)) is None
    finally:
        dist.destroy_process_group()
