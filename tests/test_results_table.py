"""scripts/results_table.py on real tiny training runs (two seeds of one experiment): mean ± std per
metric from their metrics.json, beside the published rows, as Markdown and JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from icolightning.config import CONFIG_DIR
from icolightning.jobs.train import train

SCRIPT = Path(CONFIG_DIR).parent / "scripts" / "results_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    folders = []
    for seed in (1, 2):
        run = root / "outputs" / f"tiny-seed{seed}"
        overrides = [f"paths.root_dir={root}", f"paths.output_dir={run}", "debug=tiny", f"seed={seed}",
                     f"name=tiny-seed{seed}", "plots=false"]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        train(cfg)
        (run / ".hydra").mkdir(exist_ok=True)  # what the console script's Hydra run leaves
        (run / ".hydra" / "config.yaml").write_text(f"name: tiny-seed{seed}\n")
        folders.append(run)
    return root, folders


def test_table_of_two_seeds_beside_the_published_rows(runs, tmp_path, capsys):
    root, folders = runs
    tests = [json.loads((f / "metrics.json").read_text())["test"] for f in folders]
    table = _script()
    table.main([str(root / "outputs"), "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")])
    result = json.loads((tmp_path / "t.json").read_text())
    assert list(result["ours"]) == ["tiny"]  # both seeds grouped under the experiment
    row = result["ours"]["tiny"]
    assert len(row["runs"]) == 2
    for key, _ in table.METRICS:
        values = [100 * t[f"test/{key}"] for t in tests]
        assert row[key]["mean"] == pytest.approx(np.mean(values), abs=1e-9), key
        assert row[key]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9), key
    text = (tmp_path / "t.md").read_text()
    mean_acc = row["mean_acc"]
    assert f"| ours | tiny | 2 | {mean_acc['mean']:.2f} ± {mean_acc['std']:.2f} |" in text
    cohen_r2r = "| *Icosahedral CNN R2R (Cohen et al.)* [cohen2019] | sphere_l5_r2r_wce | published | 97.70 | 75.90 |"
    assert cohen_r2r in text
    assert "| ours | sphere_l5_r2r_wce | 0 |" in text  # no run yet: honestly empty
    assert "arXiv:1902.04615" in text
    table.main([str(folders[0])])
    printed = capsys.readouterr().out
    assert f"| ours | tiny | 1 | {100 * tests[0]['test/mean_acc']:.2f} |" in printed  # one run: no std


def test_no_runs_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        _script().main([str(tmp_path / "empty")])
