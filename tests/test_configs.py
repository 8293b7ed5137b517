"""Every config group option and every experiment composes and instantiates (cheaply: objects are
built, nothing is fitted), and the Hydra multirun + DDP trap is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from icolightning.config import CONFIG_DIR, instantiate_list, instantiate_module
from icolightning.errors import UsageError
from icolightning.jobs.common import refuse_multirun_ddp
from icolightning.lightning import ClassificationModule, IcoTask, SegmentationModule

CONF = Path(CONFIG_DIR)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(tmp_path: Path, overrides: list[str], name: str = "train"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"paths.root_dir={tmp_path}",
                                                   f"paths.output_dir={tmp_path}/run", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _cpu_trainer(cfg) -> L.Trainer:
    """The configured Trainer, with the accelerator swapped for the CPU this test runs on."""
    return instantiate(cfg.trainer, accelerator="cpu", devices=1, num_nodes=1, logger=False,
                       callbacks=instantiate_list(cfg.callbacks))


def test_config_tree_has_every_group():
    for group, needed in {
        "data": {"synthetic_climatenet", "climatenet"},
        "model": {"ico_unet", "ico_classifier"},
        "trainer": {"cpu", "gpu", "ddp", "ddp_cpu", "slurm"},
        "callbacks": {"default"},
        "logger": {"csv", "tensorboard"},
        "paths": {"default"},
        "experiment": {"climatenet_unet16", "climatenet_4var"},
        "debug": {"tiny", "default"},
        "hydra": {"default"},
    }.items():
        assert needed <= set(_options(group)), group


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_instantiates(tmp_path, experiment):
    cfg = _compose(tmp_path, [f"experiment={experiment}"])
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, L.LightningDataModule)
    with open_dict(cfg):
        cfg.model.net.level = min(cfg.model.net.level, 2)  # the same network, built small
        if "widths" in cfg.model.net:
            cfg.model.net.widths = [2] * min(len(cfg.model.net.widths), 3)
    model = instantiate_module(cfg.model)
    assert isinstance(model, IcoTask)
    assert isinstance(model, SegmentationModule) == experiment.startswith(("climatenet", "sphere_l5"))
    if isinstance(model, ClassificationModule):
        assert cfg.monitor.metric == "val/acc"
    _cpu_trainer(cfg)


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_every_trainer_instantiates(tmp_path, trainer, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    cfg = _compose(tmp_path, [f"trainer={trainer}"])
    if trainer == "slurm":
        assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 4)
        plugin = instantiate(cfg.trainer.plugins[0])
        assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue
        for key, value in {"SLURM_JOB_NUM_NODES": 1, "SLURM_NTASKS_PER_NODE": 1, "SLURM_NTASKS": 1,
                           "SLURM_NODEID": 0, "SLURM_PROCID": 0, "SLURM_LOCALID": 0}.items():
            monkeypatch.setenv(key, str(value))  # a one-task job, to build the Trainer here
    if trainer in ("gpu", "ddp", "slurm"):
        assert cfg.trainer.precision == "bf16-mixed"
    assert str(cfg.trainer.default_root_dir) == f"{tmp_path}/run"
    _cpu_trainer(cfg)


@pytest.mark.parametrize("logger", _options("logger"))
def test_every_logger_instantiates(tmp_path, logger):
    cfg = _compose(tmp_path, [f"logger={logger}"])
    if "tensorboard" in cfg.logger and importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed (it is in the dev extra)")
    loggers = instantiate_list(cfg.logger)
    assert len(loggers) == len(cfg.logger)
    run = (tmp_path / "run").resolve()  # every logger writes inside the run folder (MLflow: run/mlruns)
    assert all(Path(lg.save_dir).resolve().is_relative_to(run) for lg in loggers)


_ENTRY_POINTS = [("predict", ["ckpt_path=x.ckpt", "input=x.nc"]),
                 *(("eval", ["ckpt_path=x.ckpt", f"experiment={e}"]) for e in [None, *_options("experiment")]),
                 *(("train", [f"debug={d}"]) for d in [None, *_options("debug")])]


@pytest.mark.parametrize(("name", "overrides"), _ENTRY_POINTS)
def test_entry_configs_compose(tmp_path, name, overrides):
    """Each entry config composes with each option, and the option's own values are what the job gets."""
    chosen = [o for o in overrides if not o.endswith("=None")]
    cfg = _compose(tmp_path, chosen, name)
    assert cfg.task_name == name
    assert str(cfg.paths.output_dir) == f"{tmp_path}/run"
    if name == "predict":
        assert (cfg.ckpt_path, cfg.input, cfg.output) == ("x.ckpt", "x.nc", f"{tmp_path}/run")
        assert cfg.slab_steps > 0 and cfg.batch_size > 0
        return
    option = chosen[-1].partition("=")[2] if len(chosen) > (name == "eval") else None
    group = "experiment" if name == "eval" else "debug"
    own = OmegaConf.load(CONF / group / f"{option}.yaml") if option else OmegaConf.create({})
    if "name" in own or not option:
        assert cfg.name == own.get("name", "default")
    for key, value in (own.get("trainer") or {}).items():
        assert cfg.trainer[key] == value, key
    for key, value in (own.get("data") or {}).items():
        assert cfg.data[key] == value, key
    if name == "train":
        assert [type(c).__name__ for c in instantiate_list(cfg.callbacks)] == [
            "ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "RNGStateCheckpoint", "PreemptionCheckpoint"]


def test_run_folder_is_deterministic(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.root_dir=/r", "experiment=climatenet_4var"],
                      return_hydra_config=True)
    assert cfg.hydra.run.dir == "/r/outputs/train/climatenet_4var"


def test_multirun_with_ddp_is_refused(tmp_path):
    cfg = _compose(tmp_path, ["trainer=ddp_cpu"])
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(UsageError, match="multirun"):
        refuse_multirun_ddp(cfg)
    with open_dict(cfg):
        cfg.trainer.strategy = "auto"
    refuse_multirun_ddp(cfg)


_COVERED = {"experiment", "trainer", "logger", "debug"}  # by the tests above
_GROUP_OPTIONS = [(g.name, o) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name not in _COVERED
                  for o in _options(g.name)]


def test_every_config_file_is_an_entry_or_a_group_option():
    files = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    options = {f"{g.name}/{o}.yaml" for g in CONF.iterdir() if g.is_dir() for o in _options(g.name)}
    assert files == options | {"train.yaml", "eval.yaml", "predict.yaml"}


@pytest.mark.parametrize(("group", "option"), _GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in _GROUP_OPTIONS])
def test_every_group_option_composes_and_resolves(tmp_path, group, option):
    """Each option composes into the train config and its own node resolves (an option alone need
    not make a job with the other defaults: spherical_mnist data needs the classifier that its
    experiments choose, and those are composed and instantiated above)."""
    in_defaults = any(group in entry for entry in OmegaConf.load(CONF / "train.yaml").defaults
                      if isinstance(entry, dict | DictConfig))
    cfg = _compose(tmp_path, [f"{'' if in_defaults else '+'}{group}={option}"])
    text = (CONF / group / f"{option}.yaml").read_text()
    own = OmegaConf.create(text)
    if group == "hydra":
        assert cfg.hydra.output_subdir == ".hydra" and cfg.hydra.job_logging.root.level
        return
    header = text.splitlines()[0]
    package = header.removeprefix("# @package ").strip() if header.startswith("# @package ") else group
    node = OmegaConf.to_container(OmegaConf.select(cfg, package), resolve=True) if package != "_global_" else {}
    if "_target_" in own:
        assert node["_target_"] == own["_target_"]
    if "kind" in own:  # the dask group: where preprocessing runs
        assert node["kind"] == own["kind"]
