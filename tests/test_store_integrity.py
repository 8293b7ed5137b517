"""A vertex store after it was completed: chunk files cut short are found before they are read and
rewritten region by region; zarr archives open without warnings, consolidated or not."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import datamodules.cache.entries as entries
from datamodules.cache.entries import PreprocessConfig, ensure_cache
from datamodules.cache.store import CacheError
from datamodules.climatenet.synthetic_archive import generate_archive
from datamodules.io.archive import ArchiveSource, open_archive

CONFIG = PreprocessConfig(1, ("TMQ", "PSL"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """48 six-hourly steps in 8-step chunks, written without a single warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return generate_archive(tmp_path_factory.mktemp("era5") / "era5.zarr", steps=48, nlat=8, nlon=16)


def _build(archive: Path, root: Path):
    (entry,) = ensure_cache([ArchiveSource(str(archive))], CONFIG, root, progress=False, scheduler="none")
    return entry


def test_archives_open_without_warnings_with_and_without_consolidated_metadata(archive, tmp_path):
    plain = tmp_path / "plain.zarr"
    xr.open_zarr(archive).to_zarr(plain, consolidated=False)
    assert (archive / "zarr.json").is_file() and "consolidated_metadata" in (archive / "zarr.json").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for store in (archive, plain):
            assert open_archive(str(store)).sizes["time"] == 48


def test_a_truncated_chunk_is_named_when_read(archive, tmp_path):
    with warnings.catch_warnings():  # building and consolidating the store warns about nothing
        warnings.simplefilter("error")
        entry = _build(archive, tmp_path)
    fields = entry.fields()
    Path(fields.chunk_path(13)).write_bytes(Path(fields.chunk_path(13)).read_bytes()[:-4])
    with pytest.raises(CacheError) as info:
        fields[13]
    message = str(info.value)
    assert "'fields'" in message and "time step 13" in message and "truncated" in message
    assert "\n" not in message
    with pytest.raises(IndexError):
        fields[48]


def test_a_completed_store_with_a_truncated_chunk_rewrites_only_its_region(archive, tmp_path, monkeypatch):
    reference = _build(archive, tmp_path / "reference")
    root = tmp_path / "cache"
    shutil.copytree(reference.path.parent, root / reference.path.parent.name)
    store = entries.CacheEntry(root / reference.path.parent.name / reference.path.name)
    fields = store.fields()
    Path(fields.chunk_path(21)).write_bytes(b"\x00" * 7)  # region 2 holds steps 16..23
    with pytest.raises(CacheError, match="fields step 21"):
        store.check(CONFIG)
    real, calls = entries.write_region, []
    monkeypatch.setattr(entries, "write_region", lambda *a: calls.append(a[1]) or real(*a))
    with pytest.warns(RuntimeWarning, match="rewriting their regions"):
        rebuilt = _build(archive, root)
    assert calls == [2]
    assert rebuilt.complete
    np.testing.assert_array_equal(np.asarray(rebuilt.labels()), np.asarray(reference.labels()))
    np.testing.assert_array_equal(np.asarray(rebuilt.fields()), np.asarray(reference.fields()))
