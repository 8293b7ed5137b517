"""Checkpoints cannot run code: the task class and every `_target_` in a checkpoint must be on the
allowlist, checked before anything is built, through load_module, icolightning-eval and -predict."""

from __future__ import annotations

import pytest
from checkpoints import unet_net, write_checkpoint
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from icolightning.config import CONFIG_DIR
from icolightning.errors import UntrustedCheckpointError
from icolightning.jobs.evaluate import evaluate
from icolightning.jobs.predict import predict
from icolightning.lightning import SegmentationModule, load_module


def _numpy_save(path) -> dict:
    """The issue's exploit: numpy.save writes a file (enough to plant code) when Hydra calls it."""
    return {"_target_": "numpy.save", "_args_": [str(path), [1, 2, 3]]}


def _tampered(tmp_path, case: str):
    planted = tmp_path / "planted.npy"
    exploit = _numpy_save(planted)
    hparams, module = {}, None
    if case == "net":
        hparams = {"net": exploit}
    elif case == "nested":  # hidden in an argument of an allowed network
        hparams = {"net": {**unet_net(), "norm": exploit}}
    elif case == "optimizer":
        hparams = {"optimizer": exploit}
    elif case == "scheduler_lookalike":  # a torch function next to the allowed classes
        hparams = {"scheduler": {"_target_": "torch.optim.lr_scheduler.torch.save", "obj": 1, "f": str(planted)}}
    elif case == "reexport":  # a module inside an allowed package that imports something dangerous
        hparams = {"net": {"_target_": "icolightning.models.unet.torch.save", "obj": 1, "f": str(planted)}}
    elif case == "instantiator":
        hparams = {"_instantiator": "numpy.save"}
    elif case == "module_class":
        module = "numpy.lib.npyio.DataSource"
    return write_checkpoint(tmp_path / f"{case}.ckpt", hparams=hparams, module=module), planted


CASES = ["net", "nested", "optimizer", "scheduler_lookalike", "reexport", "instantiator", "module_class"]


def test_a_genuine_checkpoint_loads(tmp_path):
    model = load_module(write_checkpoint(tmp_path / "ok.ckpt"))
    assert isinstance(model, SegmentationModule)
    assert type(model.net).__name__ == "IcoUNet"


@pytest.mark.parametrize("case", CASES)
def test_load_module_refuses_targets_off_the_allowlist(tmp_path, case):
    ckpt, planted = _tampered(tmp_path, case)
    with pytest.raises(UntrustedCheckpointError, match=rf"^{ckpt}: refusing to (build|load)"):
        load_module(ckpt)
    assert not planted.exists()


def test_own_network_packages_can_be_trusted_from_the_environment(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "own.ckpt", net={"_target_": "oracle_net.OracleNet"})
    with pytest.raises(UntrustedCheckpointError, match=r"oracle_net\.OracleNet"):
        load_module(ckpt)
    monkeypatch.setenv("ICOLIGHTNING_TRUSTED_MODULES", "oracle_net")
    assert type(load_module(ckpt).net).__name__ == "OracleNet"


def _run(tmp_path, name, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, return_hydra_config=True,
                      overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/{name}", *overrides])
    HydraConfig.instance().set_config(cfg)
    return evaluate(cfg) if name == "eval" else predict(cfg)


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_eval_and_predict_refuse_before_building_anything(tmp_path, name):
    ckpt, planted = _tampered(tmp_path, "net")
    with pytest.raises(UntrustedCheckpointError, match=r"numpy\.save"):
        _run(tmp_path, name, [f"ckpt_path={ckpt}", *(["input=x.nc"] if name == "predict" else [])])
    assert not planted.exists()
    assert not (tmp_path / "data").exists()  # refused before generating or reading any data
