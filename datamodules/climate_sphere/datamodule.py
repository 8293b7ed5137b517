"""The papers' level-5 climate dataset (Jiang et al. 2019 "climate_sphere_l5") as a LightningDataModule.

`data_dir` holds the `data-*-mesh.npz` files and UGSCNN's split lists `train_split.txt`,
`val_split.txt`, `test_split.txt`. `prepare_data()` checks every file's vertex order, maps it onto
`IcoGrid(level)` and writes one vertex store per split (`datamodules.climate_sphere.cache`);
datasets then only read those arrays. Statistics and class frequencies come from the training
split. Loaders, statistics hand-over and checkpoint state are those of `ClimateDataModule`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.climate_sphere.cache import SplitCache, ensure_split_cache
from datamodules.climate_sphere.files import CHANNELS, SPLITS, split_list
from datamodules.climatenet.datamodule import ClimateDataModule
from datamodules.normalization import Normalization

MAPPING_METHOD = "ugscnn-barycentric"
"""Recorded as the statistics' `method`: barycentric from UGSCNN's mesh (labels nearest)."""


class ClimateSphereDataset(Dataset):
    """Items (x [C, N] float32 normalised, y [N] int64) of one split cache, channels selected."""

    def __init__(self, cache: SplitCache, channels: Sequence[int], norm: Normalization) -> None:
        self.cache = cache
        self.channels = np.asarray(channels, dtype=np.int64)
        self.norm = norm
        self._length = int(cache.meta["num_times"])
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:  # opened lazily, in the process that reads (each DataLoader worker)
            self._arrays = (self.cache.fields(), self.cache.labels())
        fields, labels = self._arrays
        x = torch.from_numpy(self.norm.apply(fields[index][self.channels]))
        return x, torch.from_numpy(labels[index].astype(np.int64))


class ClimateSphereDataModule(ClimateDataModule):
    """climate_sphere_l5 npz files -> icosahedral vertex tensors on `IcoGrid(level)`.

    Args:
        data_dir: folder with the npz files and the three `*_split.txt` lists.
        level: target grid level (5: the dataset's own resolution).
        variables: "all16" (the papers' setup), "climatenet4", "A,B,C" or a list of channel names.
        cache_dir: where the per-split caches live (default: `data_dir/.icocache`).
        check_order: refuse files whose vertex order fails the checks of
            `datamodules.climate_sphere.files.check_vertex_order` (leave on for real data).
        Remaining arguments: see `ClimateDataModule`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        level: int = 5,
        variables: str | Sequence[str] = "all16",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        preprocess_workers: int | None = None,
        progress: bool = True,
        check_order: bool = True,
    ) -> None:
        super().__init__(data_dir, level, variables, cache_dir, batch_size, val_fraction=0.0, num_workers=num_workers,
                         pin_memory=pin_memory, persistent_workers=persistent_workers, drop_last=drop_last,
                         preprocess_workers=preprocess_workers, progress=progress)
        unknown = [v for v in self.variables if v not in CHANNELS]
        if unknown:
            raise ValueError(f"variables {unknown} are not channels of climate_sphere_l5 (it has {list(CHANNELS)})")
        self.channels = [CHANNELS.index(v) for v in self.variables]
        self.check_order = bool(check_order)

    def _split(self, split: str) -> SplitCache:
        return ensure_split_cache(split_list(self.data_dir, split), split, self.cache_dir, self.level,
                                  self.preprocess_workers, self.progress, self.check_order)

    def _split_statistics(self, cache: SplitCache) -> Normalization:
        stats = cache.stats()
        count, mean, m2 = (stats[key][:, self.channels] for key in ("count", "mean", "m2"))
        return Normalization.from_partials(self.variables, count, mean, m2, stats["label_counts"], self.level,
                                           MAPPING_METHOD)

    def prepare_data(self) -> None:
        """Cache all three splits (once) and keep a readable copy of the training statistics."""
        for split in SPLITS:
            cache = self._split(split)
            if split == "train":
                norm = self._split_statistics(cache)
                norm.save(cache.path / f"normalization-{'-'.join(self.variables)}.json")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") or self._normalization is None:
            train = self._split("train")
            if self._normalization is None:
                self._normalization = self._split_statistics(train)
            self.train_set = ClimateSphereDataset(train, self.channels, self.normalization)
            self.val_set = ClimateSphereDataset(self._split("val"), self.channels, self.normalization)
        if stage in (None, "test"):
            self.test_set = ClimateSphereDataset(self._split("test"), self.channels, self.normalization)
