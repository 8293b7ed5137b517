"""The pipeline at scale: a zarr archive into the vertex store, in-process and on Dask, resumable,
fault tolerant, split by time periods, and opened by xarray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import datamodules.cache.entries as entries
from datamodules import ClimateDataModule
from datamodules.cache.build import fill_stores, open_or_create
from datamodules.cache.engine import Scheduler, slurm_cluster
from datamodules.cache.entries import PreprocessConfig, ensure_cache, entry_path
from datamodules.climatenet.synthetic_archive import generate_archive
from datamodules.io.archive import ArchiveSource
from icolightning.config import CONFIG_DIR
from icolightning.errors import DataFileError

LEVEL = 2
CONFIG = PreprocessConfig(LEVEL, ("TMQ", "U850", "V850", "PSL"))
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Dask workers need this module's writer


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """240 six-hourly steps (60 days) of four variables on a 12 x 24 grid, chunks of 8 steps."""
    return generate_archive(tmp_path_factory.mktemp("era5") / "era5.zarr", steps=240, nlat=12, nlon=24)


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory):
    """The in-process build of the whole archive."""
    (entry,) = ensure_cache([ArchiveSource(str(archive))], CONFIG, tmp_path_factory.mktemp("ref"),
                            progress=False, scheduler={"kind": "none"})
    return entry


def assert_same_store(a, b) -> None:
    np.testing.assert_array_equal(np.asarray(a.fields()), np.asarray(b.fields()))
    np.testing.assert_array_equal(np.asarray(a.labels()), np.asarray(b.labels()))
    for key, value in b.stats().items():
        np.testing.assert_array_equal(a.stats()[key], value)


def test_store_is_an_xarray_dataset_with_provenance(archive, reference) -> None:
    ds = xr.open_zarr(reference.path)
    assert ds["fields"].dims == ("time", "channel", "vertex") and ds["fields"].dtype == np.float32
    assert ds["labels"].dims == ("time", "vertex") and ds["labels"].dtype == np.uint8
    assert ds.sizes["time"] == 240 and ds.sizes["vertex"] == 162
    source = xr.open_zarr(archive)
    np.testing.assert_array_equal(ds["time"].values, source["time"].values)
    assert ds.attrs["variables"] == list(CONFIG.variables) and ds.attrs["level"] == LEVEL
    assert ds.attrs["method"] == "bilinear" and ds.attrs["version"] == entries.CACHE_VERSION
    assert reference.num_regions == 30  # regions follow the archive's 8-step chunks
    fields, labels = reference.fields(), reference.labels()
    assert fields._raw and labels._raw
    for t in (0, 7, 8, 239, -1):  # the loader's direct chunk reads equal zarr's
        np.testing.assert_array_equal(fields[t], ds["fields"].values[t])
        np.testing.assert_array_equal(labels[t], ds["labels"].values[t])


@pytest.mark.slow  # ~3 min on the shared 2-core machine; the killed-worker test below covers it in CI
def test_local_cluster_with_two_workers_is_bit_identical(archive, reference, tmp_path) -> None:
    (entry,) = ensure_cache([ArchiveSource(str(archive))], CONFIG, tmp_path, progress=False,
                            scheduler={"kind": "local", "workers": 2})
    assert entry.complete
    assert_same_store(entry, reference)


def _dying_write(store_path: str, region: int, source, config, flag: str):
    """Kills its worker process the first time region 3 is written (as a node failure would)."""
    if region == 3 and not os.path.exists(flag):
        Path(flag).write_text("died")
        os._exit(1)
    return entries.write_region(store_path, region, source, config)


def test_a_killed_worker_is_replaced_and_the_build_completes(archive, reference, tmp_path) -> None:
    source = ArchiveSource(str(archive))
    path = entry_path(tmp_path / "cache", CONFIG, source)
    path.parent.mkdir(parents=True)
    store = open_or_create(path, entries._create_args(source, CONFIG))
    flag = tmp_path / "died"
    fill_stores([(store, (source, CONFIG, str(flag)))], _dying_write, Scheduler("local", 2), progress=False)
    assert flag.read_text() == "died"  # a worker really died mid-build
    assert store.complete and store.done_regions() == set(range(30))
    assert_same_store(store, reference)


def test_interrupted_build_resumes_with_only_the_missing_regions(archive, reference, tmp_path, monkeypatch) -> None:
    real, calls = entries.write_region, []

    def interrupted(store_path, region, *args):
        calls.append(region)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(store_path, region, *args)

    monkeypatch.setattr(entries, "write_region", interrupted)
    source = ArchiveSource(str(archive))
    with pytest.raises(KeyboardInterrupt):
        ensure_cache([source], CONFIG, tmp_path, progress=False, scheduler="none")
    partial = entries.CacheEntry(entry_path(tmp_path, CONFIG, source))
    assert not partial.complete and partial.done_regions() == {0, 1, 2, 3}
    calls.clear()
    monkeypatch.setattr(entries, "write_region", lambda *a: calls.append(a[1]) or real(*a))
    (entry,) = ensure_cache([source], CONFIG, tmp_path, progress=False, scheduler="none")
    assert calls == list(range(4, 30))
    assert_same_store(entry, reference)


def test_unreadable_time_step_names_the_store_and_the_steps(archive, tmp_path) -> None:
    broken = tmp_path / "broken.zarr"
    generate_archive(broken, steps=24, nlat=12, nlon=24)
    (broken / "TMQ" / "c" / "1" / "0" / "0").write_bytes(b"not a zarr chunk")
    with pytest.raises(DataFileError) as info:
        ensure_cache([ArchiveSource(str(broken))], CONFIG, tmp_path / "cache", progress=False, scheduler="none")
    message = str(info.value)
    assert "broken.zarr" in message and "time steps 8..15" in message and "TMQ" in message
    assert "\n" not in message


def test_datamodule_splits_an_archive_by_time_periods(archive, tmp_path) -> None:
    splits = {"train": ["1979-01-01", "1979-02-10"], "val": ["1979-02-11", "1979-02-20"],
              "test": ["1979-02-21", "1979-03-01"]}
    dm = ClimateDataModule(archive, level=LEVEL, cache_dir=tmp_path, batch_size=4, splits=splits, progress=False,
                           preprocess_scheduler={"kind": "none"})
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (41 * 4, 10 * 4, 240 - 51 * 4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 4, 162) and y.shape == (4, 162)
    train_store = dm.train_set.entries[0]
    assert train_store.meta["times"][-1] == "1979-02-10T18:00:00"
    assert dm.val_set.entries[0].meta["times"][0] == "1979-02-11T00:00:00"
    fields = np.asarray(train_store.fields(), dtype=np.float64)
    np.testing.assert_allclose(dm.normalization.mean, fields.mean((0, 2)), rtol=1e-9)


def test_archive_without_periods_is_refused(archive) -> None:
    with pytest.raises(Exception, match=r"set data\.splits"):
        ClimateDataModule(archive, level=LEVEL)


def test_slurm_job_script_has_the_configured_resources() -> None:
    """Checked, not submitted: there is no SLURM here."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "dask" / "slurm.yaml"))
    config["slurm"].update({"account": "climate", "queue": "gpu"})
    cluster = slurm_cluster(Scheduler.from_config(config))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=30G" in script or "#SBATCH --mem=32G" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "#SBATCH -A climate" in script and "#SBATCH -p gpu" in script
    assert "--nworkers 8" in script


def test_regrid_tool_writes_the_same_vertex_store(archive, reference, tmp_path, capsys) -> None:
    from icolightning.cli.regrid import main

    out = tmp_path / "out.zarr"
    argv = [str(archive), str(out), "--level", str(LEVEL), "--variables", *CONFIG.variables,
            "--label-variable", "LABELS", "--scheduler", "none", "--quiet"]
    assert main(argv) == 0
    assert_same_store(entries.CacheEntry(out), reference)
    with pytest.raises(SystemExit) as bad_option:  # a usage error: exit status 2, like argparse's own
        main([*argv[:-3], "--scheduler", "nonsense", "--quiet"])
    assert bad_option.value.code == 2
    assert "scheduler kind must be one of" in capsys.readouterr().err
