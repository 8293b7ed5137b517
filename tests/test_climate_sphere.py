"""The climate_sphere_l5 datamodule on SYNTHETIC files in the exact format: values land on the right
IcoGrid vertex, misordered files are refused, the per-split cache is resumable and keyed by content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import datamodules.climate_sphere.cache as sphere_cache
from datamodules.climate_sphere.datamodule import ClimateSphereDataModule
from datamodules.climate_sphere.files import CHANNELS, read_sample, sphere_to_ico, split_list
from datamodules.climate_sphere.mesh import geographic_latlon, geographic_xyz, ugscnn_icosphere
from datamodules.climate_sphere.synthetic import analytic_fields, analytic_labels, generate_sphere_dataset
from icolightning.errors import DataFileError
from icolightning.grid import IcoGrid

SMOOTH = [c for c in range(len(CHANNELS)) if CHANNELS[c] != "PS"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("climate_sphere_l5")
    generate_sphere_dataset(folder, n_train=6, n_val=2, n_test=2)
    return folder


def _module(data_dir, cache_dir, **kwargs) -> ClimateSphereDataModule:
    return ClimateSphereDataModule(data_dir, cache_dir=cache_dir, batch_size=2, preprocess_workers=1,
                                   progress=False, **kwargs)


def test_mapping_onto_icogrid_is_geometric():
    mapping = sphere_to_ico(5)
    grid = IcoGrid(5)
    np.testing.assert_allclose(mapping.distance_deg[list(grid.pole_ids)], 0.0, atol=1e-9)
    assert 1.0 < mapping.distance_deg.max() < 1.5  # no one-to-one correspondence: measured 1.33°
    # Interpolating the coordinate functions lands next to each target (flat-triangle error only).
    source = geographic_xyz(ugscnn_icosphere(5)[0])
    interpolated = mapping.fields.apply(source.T).T
    assert np.abs(interpolated - grid.xyz).max() < 5e-4  # measured 3.1e-4 (chord of 2° triangles)


def test_values_and_labels_land_on_the_right_vertex(synthetic, tmp_path):
    dm = _module(synthetic, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    lat, lon = IcoGrid(5).latlon.T
    mean, std = (np.asarray(v)[:, None] for v in (dm.normalization.mean, dm.normalization.std))
    for step in range(len(dm.train_set)):
        x, y = dm.train_set[step]
        assert x.shape == (16, 10242) and y.shape == (10242,)
        values = x.numpy() * std + mean
        truth = analytic_fields(lat, lon, step)
        error = np.abs(values - truth).max(1)
        assert (error / truth.std(1))[SMOOTH].max() < 5e-3, error  # measured 1.5e-3: barycentric error
        ps = CHANNELS.index("PS")
        assert error[ps] < 0.05 * np.ptp(truth[ps]), error  # steep lows over 2° triangles; measured 0.021
        truth_labels = analytic_labels(lat, lon, step)
        assert (np.bincount(y.numpy(), minlength=3) > 0).all()
        # Labels are nearest-vertex: off only within the nearest distance (≤ 1.33°) of a cap edge.
        near_edge = np.zeros(10242, bool)
        for other in (analytic_labels(lat + d_lat, lon + d_lon, step) for d_lat in (-1.5, 0, 1.5)
                      for d_lon in (-3.0, 0.0, 3.0)):
            near_edge |= other != truth_labels
        np.testing.assert_array_equal(y.numpy()[~near_edge], truth_labels[~near_edge])


def test_training_statistics_come_from_the_training_split(synthetic, tmp_path):
    dm = _module(synthetic, tmp_path, variables=["PSL", "TMQ"])
    dm.prepare_data()
    dm.setup("fit")
    train = sphere_cache.ensure_split_cache(split_list(synthetic, "train"), "train", tmp_path, progress=False)
    fields = np.asarray(train.fields(), dtype=np.float64)[:, [CHANNELS.index("PSL"), CHANNELS.index("TMQ")]]
    np.testing.assert_allclose(dm.normalization.mean, fields.mean((0, 2)), rtol=1e-9)
    np.testing.assert_allclose(dm.normalization.std, fields.std((0, 2)), rtol=1e-6)
    labels = np.asarray(train.labels())
    np.testing.assert_allclose(dm.normalization.class_frequencies, np.bincount(labels.ravel(), minlength=3)
                               / labels.size)
    assert dm.train_set[0][0].shape == (2, 10242)


def _copy_with(synthetic, tmp_path, transform) -> None:
    """A copy of the synthetic set whose first training file holds transformed values."""
    shutil.copytree(synthetic, tmp_path / "data")
    first = split_list(tmp_path / "data", "train")[0]
    with np.load(first) as npz:
        data, labels = transform(npz["data"]), npz["labels"]
    np.savez(first, data=data, labels=labels, synthetic=True)


def test_file_with_shuffled_vertices_is_refused(synthetic, tmp_path):
    order = np.random.default_rng(1).permutation(10242)
    _copy_with(synthetic, tmp_path, lambda data: data[:, order])
    with pytest.raises(DataFileError, match=r"data-SYNTHETIC-00000-mesh\.npz.*vertex order check failed.*Z200"):
        _module(tmp_path / "data", tmp_path / "cache").prepare_data()


@pytest.mark.parametrize("shift", ["longitude+180", "latitude flip"])
def test_shifted_or_flipped_file_is_refused(synthetic, tmp_path, shift):
    lat, lon = geographic_latlon(ugscnn_icosphere(5)[0]).T
    moved = (lat, lon + 180.0) if shift == "longitude+180" else (-lat, lon)
    _copy_with(synthetic, tmp_path, lambda data: analytic_fields(*moved, 0).astype(np.float32))
    with pytest.raises(DataFileError, match=r"00000-mesh\.npz.*not low over high terrain"):
        _module(tmp_path / "data", tmp_path / "cache").prepare_data()


def test_order_check_can_be_switched_off_for_known_good_data(synthetic, tmp_path):
    order = np.random.default_rng(1).permutation(10242)
    _copy_with(synthetic, tmp_path, lambda data: data[:, order])
    _module(tmp_path / "data", tmp_path / "cache", check_order=False).prepare_data()


def test_interrupted_cache_build_resumes_and_matches_a_fresh_parallel_one(synthetic, tmp_path, monkeypatch):
    files = split_list(synthetic, "train")
    monkeypatch.setattr(sphere_cache, "CHUNK_FILES", 2)
    real_write, calls = sphere_cache._write_chunk, []

    def failing_write(files, start, chunk, *args):
        if chunk == 1:
            raise KeyboardInterrupt
        return real_write(files, start, chunk, *args)

    monkeypatch.setattr(sphere_cache, "_write_chunk", failing_write)
    with pytest.raises(KeyboardInterrupt):
        sphere_cache.ensure_split_cache(files, "train", tmp_path / "a", progress=False)
    (partial,) = (tmp_path / "a").glob("*/train-*.zarr")
    assert not sphere_cache.SplitCache(partial).complete  # never opened by readers
    assert sphere_cache.SplitCache(partial).done_regions() == {0}

    def counting_write(files, start, chunk, *args):
        calls.append(chunk)
        return real_write(files, start, chunk, *args)

    monkeypatch.setattr(sphere_cache, "_write_chunk", counting_write)
    resumed = sphere_cache.ensure_split_cache(files, "train", tmp_path / "a", progress=False)
    assert calls == [1, 2]  # chunk 0 was kept from the interrupted run
    monkeypatch.setattr(sphere_cache, "_write_chunk", real_write)
    fresh = sphere_cache.ensure_split_cache(files, "train", tmp_path / "b", workers=2, progress=False)
    np.testing.assert_array_equal(resumed.fields(), fresh.fields())
    np.testing.assert_array_equal(resumed.labels(), fresh.labels())
    for key, value in fresh.stats().items():
        np.testing.assert_array_equal(resumed.stats()[key], value)
    for row, path in enumerate(files):  # every row, across chunk boundaries, is its own file
        fields, labels = sphere_to_ico(5).apply(*read_sample(path))
        np.testing.assert_array_equal(fresh.fields()[row], fields)
        np.testing.assert_array_equal(fresh.labels()[row], labels)
    assert resumed.complete and fresh.complete


def test_cache_is_keyed_by_the_files(synthetic, tmp_path):
    shutil.copytree(synthetic, tmp_path / "data")
    files = split_list(tmp_path / "data", "val")
    first = sphere_cache.ensure_split_cache(files, "val", tmp_path / "cache", progress=False)
    assert sphere_cache.ensure_split_cache(files, "val", tmp_path / "cache", progress=False).path == first.path
    with np.load(files[0]) as npz:
        np.savez(files[0], data=npz["data"] + 1.0, labels=npz["labels"])
    changed = sphere_cache.ensure_split_cache(files, "val", tmp_path / "cache", progress=False)
    assert changed.path != first.path
    np.testing.assert_allclose(changed.fields()[0], first.fields()[0] + 1.0, rtol=1e-6)


def test_malformed_file_and_missing_list_are_named(synthetic, tmp_path):
    shutil.copytree(synthetic, tmp_path / "data")
    (tmp_path / "data" / "test_split.txt").unlink()
    with pytest.raises(DataFileError, match=r"test_split\.txt"):
        _module(tmp_path / "data", tmp_path / "cache").prepare_data()
    first = split_list(tmp_path / "data", "train")[0]
    np.savez(first, data=np.zeros((16, 642), np.float32), labels=np.zeros((3, 642), np.float32))
    with pytest.raises(DataFileError, match=r"00000-mesh\.npz: 'data' is \(16, 642\)"):
        _module(tmp_path / "data", tmp_path / "cache2").prepare_data()
