"""Checkpoints are data: the task class, its arguments and every `_target_` nested anywhere in a
checkpoint are checked before anything is built, through load_module, icolightning-eval and -predict.

Each attack is written so that exactly one branch of the check stops it (see the `refusal` column):
removing that branch lets it through."""

from __future__ import annotations

import pytest
import torch
from checkpoints import unet_net, write_checkpoint
from cli_runs import compose_config

from icolightning.errors import UntrustedCheckpointError
from icolightning.jobs.evaluate import evaluate
from icolightning.jobs.predict import predict
from icolightning.lightning import SegmentationModule, load_module
from icolightning.lightning.trust import LEGACY_TARGETS


def _numpy_save(path) -> dict:
    """The issue's exploit: numpy.save writes a file (enough to plant code) when Hydra calls it."""
    return {"_target_": "numpy.save", "file": str(path), "arr": [1, 2, 3]}


def _interpolation(path) -> str:
    return "${oc.create:{_target_: numpy.save, file: " + str(path) + ", arr: [1]}}"


ATTACKS = {  # case: (checkpoint changes, what the refusal says)
    "net": (lambda p: {"hparams": {"net": _numpy_save(p)}}, r"refusing to build 'numpy\.save'"),
    "nested": (lambda p: {"hparams": {"net": {**unet_net(), "norm": _numpy_save(p)}}}, r"refusing to build"),
    "in_list": (lambda p: {"hparams": {"net": {**unet_net(), "widths": [2, _numpy_save(p)]}}}, r"refusing to build"),
    "in_tuple": (lambda p: {"hparams": {"net": {**unet_net(), "widths": (2, _numpy_save(p))}}}, r"refusing to build"),
    "optimizer": (lambda p: {"hparams": {"optimizer": _numpy_save(p)}}, r"refusing to build"),
    "scheduler_lookalike": (lambda p: {"hparams": {"scheduler": {
        "_target_": "torch.optim.lr_scheduler.torch.save", "obj": 1, "f": str(p)}}}, r"refusing to build"),
    "reexport": (lambda p: {"hparams": {"net": {
        "_target_": "icolightning.models.unet.torch.save", "obj": 1, "f": str(p)}}}, r"refusing to build"),
    "args": (lambda p: {"hparams": {"net": {"_target_": "icolightning.models.IcoUNet",
                                            "_args_": [4, 3, 2]}}}, r"may not pass _args_"),
    "partial": (lambda p: {"hparams": {"optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}}},
                r"may not pass _partial_"),
    "instantiator": (lambda p: {"hparams": {"_instantiator": "numpy.save"}}, r"may not pass _instantiator"),
    "module_arguments": (lambda p: {"extra": {"module_arguments": {"net": _numpy_save(p)}}}, r"legacy"),
    "legacy_hparams": (lambda p: {"extra": {"hparams": {"net": _numpy_save(p)}}}, r"legacy"),
    "interpolation": (lambda p: {"hparams": {"net": {**unet_net(), "norm": _interpolation(p)}}},
                      r"never interpolated"),
    "module_class": (lambda p: {"module": "numpy.lib.npyio.DataSource"}, r"refusing to load the module class"),
    "unknown_argument": (lambda p: {"hparams": {"net": {**unet_net(), "evil": 1}}}, r"takes no argument 'evil'"),
    "level_12": (lambda p: {"hparams": {"net": {**unet_net(), "level": 12}}}, r"level=12: must be numbers"),
    "huge_width": (lambda p: {"hparams": {"net": {**unet_net(), "widths": [2, 10**6]}}}, r"widths=.*must be"),
    "deep": (lambda p: {"hparams": {"net": {**unet_net(), "widths": [2] * 20}}}, r"20 stages"),
    "compile_backend": (lambda p: {"hparams": {"compile": "numpy.save"}}, r"compile='numpy\.save'"),
}


def _tampered(tmp_path, case: str):
    planted = tmp_path / "planted.npy"
    changes, refusal = ATTACKS[case]
    return write_checkpoint(tmp_path / f"{case}.ckpt", **changes(planted)), planted, refusal


def test_a_genuine_checkpoint_loads_once(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "ok.ckpt")
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(k.get("weights_only")) or real_load(*a, **k))
    model = load_module(path)
    assert isinstance(model, SegmentationModule) and type(model.net).__name__ == "IcoUNet"
    assert reads == [True]  # read once, weights-only


@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_load_module_refuses_the_attack(tmp_path, case):
    ckpt, planted, refusal = _tampered(tmp_path, case)
    with pytest.raises(UntrustedCheckpointError, match=rf"^{ckpt}: .*{refusal}"):
        load_module(ckpt)
    assert not planted.exists()


def test_legacy_module_paths_load_at_their_new_home(tmp_path):
    assert LEGACY_TARGETS == {"icolightning.baselines.PlanarCNN": "icolightning.models.baselines.PlanarCNN"}
    net = {"_target_": "icolightning.models.baselines.PlanarCNN", "in_channels": 4, "num_classes": 3,
           "level": 2, "channels": [2, 4]}
    reference = write_checkpoint(tmp_path / "new.ckpt", net=net)
    legacy = write_checkpoint(tmp_path / "old.ckpt", net=net,
                              hparams={"net": {**net, "_target_": "icolightning.baselines.PlanarCNN"}})
    torch.save({**torch.load(legacy, weights_only=True),
                "state_dict": torch.load(reference, weights_only=True)["state_dict"]}, legacy)
    model = load_module(legacy)
    assert type(model.net).__module__ == "icolightning.models.baselines"
    assert model.hparams["net"]["_target_"] == "icolightning.models.baselines.PlanarCNN"
    x = torch.randn(1, 4, 162)
    torch.testing.assert_close(model.eval()(x), load_module(reference).eval()(x))


def test_own_network_packages_can_be_trusted_from_the_environment(tmp_path, monkeypatch):
    ckpt = write_checkpoint(tmp_path / "own.ckpt", net={"_target_": "oracle_net.OracleNet"})
    with pytest.raises(UntrustedCheckpointError, match=r"oracle_net\.OracleNet"):
        load_module(ckpt)
    monkeypatch.setenv("ICOLIGHTNING_TRUSTED_MODULES", "oracle_net")
    assert type(load_module(ckpt).net).__name__ == "OracleNet"


@pytest.mark.parametrize("name", ["eval", "predict"])
@pytest.mark.parametrize("case", sorted(ATTACKS))
def test_eval_and_predict_refuse_before_building_anything(tmp_path, name, case):
    ckpt, planted, refusal = _tampered(tmp_path, case)
    cfg = compose_config(name, tmp_path, name, [f"ckpt_path={ckpt}", *(["input=x.nc"] if name == "predict" else [])])
    with pytest.raises(UntrustedCheckpointError, match=refusal):
        evaluate(cfg) if name == "eval" else predict(cfg)
    assert not planted.exists()
    assert not (tmp_path / "data").exists()  # refused before generating or reading any data
