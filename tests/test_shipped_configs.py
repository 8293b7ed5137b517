"""The shipped experiments and the shipped DDP trainer, run as shipped on this CPU.

The smoke runs elsewhere (test_configs, test_option_fits, test_sphere_experiments) shrink levels,
widths and epochs to stay fast. Here every conf/experiment/*.yaml builds its network at the shipped
level, widths and loss, with its shipped trainer config (precision included: bf16-mixed runs on a
CPU), and runs one real optimiser step on a batch of one random sample; only the accelerator, the
device count, the run length and the data (none is read) are changed. `trainer=ddp` runs with its
shipped strategy, precision and sync_batchnorm over gloo with 2 CPU processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from checkpoints import stats
from cli_runs import compose_config, free_port, run_cli
from torch.utils.data import DataLoader

from icolightning.config import CONFIG_DIR, instantiate_module
from icolightning.grid import vertex_count
from icolightning.lightning import SegmentationModule

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")
                     if not p.stem.endswith("_common"))
FAST = {"climatenet_4var", "mnist_ico_r"}
"""One segmentation and one classification experiment in the default suite (a level-5 step in bf16 on
a shared CPU takes about a minute); the others are marked slow."""


def _one_sample(model, cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    net = cfg.model.net
    x = torch.randn(net.in_channels, vertex_count(net.level))
    if isinstance(model, SegmentationModule):
        return [(x, torch.randint(0, net.num_classes, (x.shape[-1],)))]
    return [(x, torch.tensor(3))]


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=() if e in FAST else pytest.mark.slow)
                                        for e in EXPERIMENTS])
def test_shipped_network_takes_one_real_training_step(tmp_path, experiment):
    cfg = compose_config("train", tmp_path, "run", [f"experiment={experiment}"])
    data_stats = stats(cfg.data.level, tuple(cfg.data.variables)) if "variables" in cfg.data else None
    model = instantiate_module(cfg.model, data_stats=data_stats)
    assert model.hparams.net["level"] == cfg.data.level  # the shipped level, widths and loss
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = hydra.utils.instantiate(cfg.trainer, accelerator="cpu", devices=1, strategy="auto", max_steps=1,
                                      max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                                      enable_progress_bar=False, enable_model_summary=False, callbacks=[])
    assert trainer.precision == cfg.trainer.precision
    trainer.fit(model, train_dataloaders=DataLoader(_one_sample(model, cfg), batch_size=1))
    assert trainer.global_step == 1
    after = model.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_shipped_ddp_trainer_with_its_precision_on_cpu(tmp_path):
    cfg = compose_config("train", tmp_path, "ddp", ["trainer=ddp"])
    assert (cfg.trainer.strategy, cfg.trainer.precision, cfg.trainer.sync_batchnorm) == ("ddp", "bf16-mixed", True)
    done = run_cli("icolightning-train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                          "debug=tiny", "trainer.max_epochs=1", "test=false", "plots=false",
                                          f"paths.root_dir={tmp_path}", "name=ddp"], cwd=tmp_path, timeout=400,
                   extra_env={"MASTER_PORT": str(free_port())})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bfloat16" in done.stdout + done.stderr  # Lightning's note on the precision it runs with
    results = json.loads((tmp_path / "outputs" / "train" / "ddp" / "metrics.json").read_text())
    assert results["global_step"] == 3  # 12 training samples, 2 ranks, batch 2
