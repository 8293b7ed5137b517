"""Normalisation statistics have one owner: `Normalization.save/load` (JSON next to the cache) and
`to_dict/from_dict` (checkpoints). Both round trips are exact, and both climate datamodules write
the same format through it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules.climate_sphere.datamodule import ClimateSphereDataModule
from datamodules.climate_sphere.synthetic import generate_sphere_dataset
from datamodules.climatenet.datamodule import ClimateDataModule
from datamodules.climatenet.synthetic import generate_dataset
from datamodules.normalization import Normalization
from icolightning.errors import DataFileError


def _awkward() -> Normalization:
    """Floats with no short decimal form (a lossy writer, e.g. float32 or %g, changes them)."""
    rng = np.random.default_rng(7)
    mean, std = rng.normal(size=3) * 1e5, rng.lognormal(size=3) / 3
    counts = np.array([np.pi, 1 / 3, 2 / 3 - 1e-12])
    return Normalization(("TMQ", "U850", "PSL"), tuple(map(float, mean)), tuple(map(float, std)),
                         tuple(map(float, counts / counts.sum())), 11, 3, "conservative")


def test_file_round_trip_is_exact(tmp_path):
    norm = _awkward()
    path = norm.save(tmp_path / "stats.json")
    assert Normalization.load(path) == norm
    assert Normalization.from_dict(norm.to_dict()) == norm
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary left behind


MISMATCHED = ('{"variables": ["A"], "mean": [], "std": [], "class_frequencies": [], "num_samples": 1, '
              '"level": 1, "method": "x"}')


@pytest.mark.parametrize("content", ["{not json", '{"mean": [1.0]}', "[1, 2]", MISMATCHED])
def test_a_file_that_is_not_statistics_names_itself(tmp_path, content):
    path = tmp_path / "normalization-broken.json"
    path.write_text(content)
    with pytest.raises(DataFileError, match=r"normalization-broken\.json: not a normalisation statistics file"):
        Normalization.load(path)


def test_both_climate_datamodules_write_the_same_format(tmp_path):
    generate_dataset(tmp_path / "climatenet", n_train=3, n_test=1, nlat=24, nlon=48, seed=1, progress=False)
    generate_sphere_dataset(tmp_path / "sphere", n_train=2, n_val=1, n_test=1)
    common = {"batch_size": 2, "preprocess_workers": 1, "progress": False, "variables": "climatenet4"}
    modules = [ClimateDataModule(tmp_path / "climatenet", level=1, cache_dir=tmp_path / "cache1", **common),
               ClimateSphereDataModule(tmp_path / "sphere", cache_dir=tmp_path / "cache2", **common)]
    for dm, cache in zip(modules, ("cache1", "cache2"), strict=True):
        dm.prepare_data()
        dm.setup("fit")
        (stored,) = (tmp_path / cache).rglob("normalization-*.json")
        assert Normalization.load(stored) == dm.normalization
        assert json.loads(stored.read_text()) == dm.state_dict()["normalization"]
