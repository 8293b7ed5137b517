"""ClimateDataModule: cache, time split, statistics, checkpoint state and loaders."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

from datamodules import ClimateDataModule
from datamodules.cache.entries import CacheEntry, PreprocessConfig, ensure_cache, entry_path
from datamodules.cache.store import VertexStore
from datamodules.climatenet.datamodule import ALL16, CLIMATENET4, samples_by_time, split_validation
from datamodules.climatenet.synthetic import generate_dataset
from icolightning.grid import IcoGrid

LEVEL = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("climatenet")
    generate_dataset(root, n_train=10, n_test=3, nlat=48, nlon=96, seed=3)
    return root


def make_dm(data_dir: Path, cache: Path, **kwargs) -> ClimateDataModule:
    options = {
        "level": LEVEL,
        "cache_dir": cache,
        "batch_size": 4,
        "progress": False,
        "preprocess_workers": 1,
    }
    return ClimateDataModule(data_dir, **{**options, **kwargs})


def entry_dirs(cache: Path) -> dict[str, float]:
    return {
        str(p): p.stat().st_mtime_ns for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith(".")
    }


def test_batches_are_normalised_vertex_tensors(data_dir, tmp_path) -> None:
    dm = make_dm(data_dir, tmp_path / "cache", variables="all16", val_fraction=0.2)
    dm.prepare_data()
    dm.setup("fit")
    n = IcoGrid(LEVEL).num_vertices
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16, n) and x.dtype == torch.float32
    assert y.shape == (4, n) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    train = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert torch.isfinite(train).all()
    torch.testing.assert_close(train.mean(dim=(0, 2)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(dim=(0, 2), unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    freqs = dm.class_frequencies
    assert freqs.shape == (3,) and freqs.sum() == pytest.approx(1.0) and freqs[0] > 0.8 and (freqs > 0).all()
    stored = list((tmp_path / "cache").glob("*/normalization-*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["mean"] == list(dm.normalization.mean)


def test_validation_is_the_latest_training_samples(data_dir, tmp_path) -> None:
    dm = make_dm(data_dir, tmp_path / "cache", val_fraction=0.3)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (7, 3)

    def dates(dataset) -> list[str]:
        return [dataset.entries[e].meta["times"][t] for e, t in dataset.samples]

    assert max(dates(dm.train_set)) < min(dates(dm.val_set))
    assert not set(dates(dm.train_set)) & set(dates(dm.val_set))
    val_batch = next(iter(dm.val_dataloader()))[0]
    again = next(iter(dm.val_dataloader()))[0]
    torch.testing.assert_close(val_batch, again)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [("climatenet4", CLIMATENET4), ("all16", ALL16), ("PSL,TMQ", ("PSL", "TMQ")), (["T500"], ("T500",))],
)
def test_variables_accept_presets_and_lists(data_dir, tmp_path, variables, expected) -> None:
    dm = make_dm(data_dir, tmp_path / "cache", variables=variables)
    assert dm.variables == expected
    dm.prepare_data()
    dm.setup("test")
    assert dm.test_set[0][0].shape == (len(expected), IcoGrid(LEVEL).num_vertices)


def test_statistics_restore_from_a_checkpoint_without_train_data(data_dir, tmp_path) -> None:
    dm = make_dm(data_dir, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    state = dm.state_dict()
    assert json.loads(json.dumps(state)) == state
    only_test = tmp_path / "only_test"
    (only_test / "test").mkdir(parents=True)
    for path in (data_dir / "test").glob("*.nc"):
        os.link(path, only_test / "test" / path.name)
    restored = make_dm(only_test, tmp_path / "cache2")
    restored.load_state_dict(state)
    restored.prepare_data()
    restored.setup("test")
    assert restored.normalization == dm.normalization
    dm.setup("test")
    torch.testing.assert_close(restored.test_set[0][0], dm.test_set[0][0])
    other = make_dm(only_test, tmp_path / "cache2", variables="all16")
    with pytest.raises(ValueError, match="normalisation is for variables"):
        other.load_state_dict(state)


def test_restored_statistics_reach_datasets_built_before_the_restore(data_dir, tmp_path) -> None:
    """Lightning calls setup() before load_state_dict() on fit(ckpt_path=...) and test(ckpt_path=...)."""
    dm = make_dm(data_dir, tmp_path / "cache", val_fraction=0.3)
    dm.prepare_data()
    dm.setup()
    state = dm.state_dict()["normalization"]
    state = {**state, "mean": [m + 1.0 for m in state["mean"]], "std": [2.0 * s for s in state["std"]]}
    dm.load_state_dict({"normalization": state})
    mean, std = (np.asarray(state[k], np.float32)[:, None] for k in ("mean", "std"))
    for dataset in (dm.train_set, dm.val_set, dm.test_set):
        e, t = dataset.samples[0]
        expected = (np.asarray(dataset.entries[e].fields()[t]) - mean) / std
        np.testing.assert_allclose(dataset[0][0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_validation_split_that_would_be_empty_is_refused(tmp_path) -> None:
    generate_dataset(tmp_path / "data", n_train=1, n_test=1, nlat=24, nlon=48, seed=0)
    with pytest.raises(ValueError, match=r"val_fraction=0.1 of 1 training sample.*validation split empty"):
        make_dm(tmp_path / "data", tmp_path / "cache", val_fraction=0.1).setup("fit")
    dm = make_dm(tmp_path / "data", tmp_path / "cache", val_fraction=0.0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (1, 0)


def test_undated_samples_come_after_dated_ones_in_file_name_order() -> None:
    def entry(name: str, times: list) -> SimpleNamespace:
        return SimpleNamespace(meta={"source": f"/data/{name}", "times": times})

    entries = [entry("b.nc", [None]), entry("a.nc", [None, None]), entry("z.nc", ["2001-01-02T00:00:00"])]
    entries.append(entry("y.nc", ["2001-01-01T00:00:00"]))
    ordered = samples_by_time(entries)
    assert ordered == [(3, 0), (2, 0), (1, 0), (1, 1), (0, 0)]
    assert split_validation(ordered, 0.4)[1] == [(1, 1), (0, 0)]


def test_cache_is_reused_and_keyed_by_content(data_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    make_dm(data_dir, cache).prepare_data()
    first = entry_dirs(cache)
    assert len(first) == 13
    make_dm(data_dir, cache).prepare_data()
    assert entry_dirs(cache) == first
    make_dm(data_dir, cache, level=LEVEL + 1).prepare_data()
    make_dm(data_dir, cache, variables="PSL").prepare_data()
    make_dm(data_dir, cache, method="nearest").prepare_data()
    assert len(entry_dirs(cache)) == 4 * 13
    assert len({Path(p).parent for p in entry_dirs(cache)}) == 4


def test_touched_source_file_is_rebuilt_alone(tmp_path) -> None:
    generate_dataset(tmp_path / "data", n_train=3, n_test=1, nlat=24, nlon=48, seed=0)
    cache = tmp_path / "cache"
    make_dm(tmp_path / "data", cache).prepare_data()
    before = entry_dirs(cache)
    touched = sorted((tmp_path / "data" / "train").glob("*.nc"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    make_dm(tmp_path / "data", cache).prepare_data()
    after = entry_dirs(cache)
    assert len(set(after) - set(before)) == 1 and touched.stem in next(iter(set(after) - set(before)))


def test_interrupted_run_leaves_no_partial_entry_and_resumes(tmp_path, monkeypatch) -> None:
    import datamodules.cache.entries as cache_module

    generate_dataset(tmp_path / "data", n_train=4, n_test=0, nlat=24, nlon=48, seed=0)
    sources = sorted((tmp_path / "data" / "train").glob("*.nc"))
    config = PreprocessConfig(LEVEL, CLIMATENET4)
    original = cache_module.write_region
    calls = []

    def crash_on_third(store_path, region, source, cfg):
        calls.append(Path(source))
        if len(calls) == 3:  # half a region written, then killed
            zarr.open_array(Path(store_path) / "fields", mode="r+")[0, 0, :10] = 1.0
            raise KeyboardInterrupt
        return original(store_path, region, source, cfg)

    monkeypatch.setattr(cache_module, "write_region", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(sources, config, tmp_path / "cache", workers=1, progress=False)
    stores = [VertexStore(entry_path(tmp_path / "cache", config, s)) for s in sources]
    assert [s.complete for s in stores] == [False] * 4  # finished only when all regions are in
    assert [s.done_regions() for s in stores[:3]] == [{0}, {0}, set()]
    calls.clear()
    monkeypatch.setattr(cache_module, "write_region", lambda *a: calls.append(Path(a[2])) or original(*a))
    entries = ensure_cache(sources, config, tmp_path / "cache", workers=1, progress=False)
    assert calls == sources[2:]
    reference = ensure_cache(sources, config, tmp_path / "fresh", workers=1, progress=False)
    for entry, fresh in zip(entries, reference, strict=True):
        entry.check(config)
        np.testing.assert_array_equal(entry.fields(), fresh.fields())
        np.testing.assert_array_equal(entry.labels(), fresh.labels())


def _prepare_in_process(data_dir: str, cache: str) -> None:
    make_dm(Path(data_dir), Path(cache), preprocess_workers=2).prepare_data()


def test_concurrent_ranks_and_a_process_pool_build_one_consistent_cache(data_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    ranks = [ctx.Process(target=_prepare_in_process, args=(str(data_dir), str(cache))) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(120)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    folder = next(cache.iterdir())
    assert all(CacheEntry(p).complete for p in folder.glob("*.zarr"))
    serial = make_dm(data_dir, tmp_path / "serial")
    serial.prepare_data()
    config = serial.config
    for source in sorted((data_dir / "train").glob("*.nc")):
        pooled, reference = (CacheEntry(entry_path(c, config, source)) for c in (cache, tmp_path / "serial"))
        pooled.check(config)
        np.testing.assert_array_equal(pooled.fields(), reference.fields())
        np.testing.assert_array_equal(pooled.labels(), reference.labels())


def test_unreadable_cache_entry_is_rebuilt(data_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    dm = make_dm(data_dir, cache)
    dm.prepare_data()
    dm.setup("test")
    expected = dm.test_set[0][0].clone()
    entry = next(p for p in (cache / dm.config.folder_name()).iterdir() if p.name.startswith("data-2011"))
    (entry / "zarr.json").write_text("{not json")
    rebuilt = make_dm(data_dir, cache)
    with pytest.warns(RuntimeWarning, match="rebuilding unreadable cache entry"):
        rebuilt.prepare_data()
    rebuilt.setup("test")
    torch.testing.assert_close(rebuilt.test_set[0][0], expected)


def test_dataloader_workers_read_from_the_cache(data_dir, tmp_path) -> None:
    dm = make_dm(data_dir, tmp_path / "cache", num_workers=2, persistent_workers=True, pin_memory=False)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    seen = sum(x.shape[0] for x, _ in loader)
    assert seen == len(dm.train_set)
