"""A checkpoint written before the redesign (tests/fixtures/pre_redesign_unet.ckpt: `debug=tiny` with
widths [2, 4], made by commit a14f391's icolightning-train) still loads and evaluates to the test
metrics that commit's icolightning-eval reported (tests/fixtures/pre_redesign_unet_metrics.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import compose_config

from icolightning.jobs.evaluate import evaluate
from icolightning.lightning import SegmentationModule, load_module

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "pre_redesign_unet.ckpt"
TINY_DATA = ["data.level=2", "data.batch_size=2", "data.preprocess_workers=1", "synthetic.n_train=12",
             "synthetic.n_test=4", "synthetic.nlat=24", "synthetic.nlon=48"]  # as in debug=tiny


def test_old_checkpoint_loads_as_the_same_task() -> None:
    model = load_module(CHECKPOINT)
    assert isinstance(model, SegmentationModule)
    assert model.data_stats["level"] == 2 and list(model.data_stats["variables"]) == ["TMQ", "U850", "V850", "PSL"]


def test_old_checkpoint_evaluates_to_the_metrics_it_had(tmp_path) -> None:
    expected = json.loads((FIXTURES / "pre_redesign_unet_metrics.json").read_text())["test"]
    cfg = compose_config("eval", tmp_path, "eval", [f"ckpt_path={CHECKPOINT}", *TINY_DATA,
                                                     "trainer.enable_progress_bar=false"])
    evaluated = evaluate(cfg)["test"]
    for key, value in expected.items():
        # The old metrics counted vertices; they live on under <key>_vertex (test/<key> is now area-weighted).
        key = f"{key}_vertex" if f"{key}_vertex" in evaluated else key
        assert evaluated[key] == (None if value is None else pytest.approx(value, abs=1e-6)), key
    assert evaluated["test/mean_iou_area"] == evaluated["test/mean_iou"] != evaluated["test/mean_iou_vertex"]
