"""ClimateNet-layout segmentation data as a LightningDataModule.

`data_dir/train/*.nc` and `data_dir/test/*.nc` are regridded once into the on-disk cache
(`datamodules.cache.entries`) by `prepare_data()`; datasets then only read memory-mapped vertex arrays,
so DataLoader workers never touch netCDF. The validation split is the latest `val_fraction`
of the training samples by time, never a random draw, so that it tests generalisation to
unseen weather. Samples whose time is unknown (no decodable time coordinate and no
YYYY-MM-DD in the file name) are ordered after all dated ones, by file name and step, so they
are the first to go to validation. Normalisation statistics and class frequencies come from the remaining
training samples only and travel with checkpoints through `state_dict()`.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.cache.entries import CacheEntry, PreprocessConfig, ensure_cache
from datamodules.climatenet.schema import VARIABLES
from datamodules.io.archive import ArchiveSource, is_archive
from datamodules.io.netcdf import list_netcdf
from datamodules.normalization import Normalization
from datamodules.samplers import EpochShuffle, evaluation_sampler
from icolightning.classes import NUM_CLASSES
from icolightning.errors import DataError

CLIMATENET4: tuple[str, ...] = ("TMQ", "U850", "V850", "PSL")
ALL16: tuple[str, ...] = tuple(VARIABLES)
PRESETS: dict[str, tuple[str, ...]] = {"climatenet4": CLIMATENET4, "all16": ALL16}
_OPEN_ENTRIES = 64


class EmptySplitError(DataError, FileNotFoundError):
    """A split folder is missing or holds no netCDF files."""


def resolve_variables(variables: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name ("climatenet4", "all16"), a comma-separated string or a list of names."""
    if isinstance(variables, str):
        if variables.lower() in PRESETS:
            return PRESETS[variables.lower()]
        variables = [v.strip() for v in variables.split(",")]
    names = tuple(str(v) for v in variables if str(v))
    if not names or len(set(names)) != len(names):
        raise ValueError(f"variables must be a non-empty list of distinct names, got {variables!r}")
    return names


def split_files(data_dir: Path, split: str) -> list[Path]:
    folder = data_dir / split
    if not folder.is_dir():
        raise EmptySplitError(f"split folder {folder} does not exist (expected {data_dir}/train and /test)")
    files = list_netcdf(folder)
    if not files:
        raise EmptySplitError(f"split folder {folder} holds no netCDF files (*.nc)")
    return files


def samples_by_time(entries: Sequence[CacheEntry]) -> list[tuple[int, int]]:
    """(entry, step) pairs in time order; undated steps come after all dated ones, in file-name and
    step order (so with a validation split they are validated on, never trained on, first)."""
    keyed = []
    for e, entry in enumerate(entries):
        meta = entry.meta
        name = Path(meta["source"]).name
        for t, stamp in enumerate(meta["times"]):
            keyed.append(((stamp is None, stamp or "", name, t), (e, t)))
    return [sample for _, sample in sorted(keyed)]


def checked_fraction(val_fraction: float) -> float:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return float(val_fraction)


def split_validation(samples: list[tuple[int, int]], val_fraction: float) -> tuple[list, list]:
    """The latest ceil(val_fraction * n) samples validate; at least one sample stays for training.

    With val_fraction > 0 the validation split must not come out empty (a single training
    sample): that raises ValueError rather than silently validating on nothing.
    """
    val_fraction = checked_fraction(val_fraction)
    n_val = min(math.ceil(val_fraction * len(samples)), len(samples) - 1)
    if val_fraction > 0 and n_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction:g} of {len(samples)} training sample(s) leaves the validation split "
            "empty (at least one sample must stay for training): add training files or set val_fraction=0"
        )
    return samples[: len(samples) - n_val], samples[len(samples) - n_val :]


class ClimateDataset(Dataset):
    """Items (x [C, N] float32 normalised, y [N] int64) read from memory-mapped cache entries.

    Memory maps are opened lazily in the process that reads (so each DataLoader worker has its
    own) and at most `_OPEN_ENTRIES` stay open, which bounds file descriptors.
    """

    def __init__(self, entries: Sequence[CacheEntry], samples: Sequence[tuple[int, int]], norm: Normalization):
        self.entries = list(entries)
        self.samples = list(samples)
        self.norm = norm
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}

    def _arrays(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        if e not in self._open:
            self._open[e] = (self.entries[e].fields(), self.entries[e].labels())
            while len(self._open) > _OPEN_ENTRIES:
                self._open.popitem(last=False)
        self._open.move_to_end(e)
        return self._open[e]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        e, t = self.samples[index]
        fields, labels = self._arrays(e)
        x = torch.from_numpy(self.norm.apply(fields[t]))
        y = torch.from_numpy(labels[t].astype(np.int64))
        return x, y


class ClimateDataModule(L.LightningDataModule):
    """ClimateNet-layout netCDF folders -> icosahedral vertex tensors.

    Args:
        data_dir: folder with `train/` and `test/` subfolders of lat-lon netCDF files.
        level: icosahedral level of the vertex grid (N = 10·4^level + 2).
        variables: "climatenet4" (TMQ, U850, V850, PSL), "all16", "A,B,C" or a list of names.
        cache_dir: where the regridded cache lives (default: `data_dir/.icocache`).
        batch_size, num_workers, pin_memory, persistent_workers, drop_last: DataLoader knobs.
        val_fraction: share of the training samples, the latest in time, used for validation.
        method: "bilinear", "nearest" or "conservative" (area-weighted mean over each vertex's
            Voronoi cell) for the fields.
        label_method: "nearest" (label of the nearest grid point) or "majority" (the class
            covering the largest share of the vertex's Voronoi cell) for the labels.
        label_variable: name of the label field.
        nan_policy: "fill" (skip missing values when regridding, warn, set leftovers to the
            training mean) or "raise".
        preprocess_workers: processes for `prepare_data` (default: up to 4 CPUs).
        progress: show tqdm bars while preprocessing.
        shuffle_seed: seed of the training shuffle (`EpochShuffle`: one permutation per epoch).
        splits: for an archive (`data_dir` a zarr store, URL or glob of multi-step netCDF files):
            `{"train": [first, last], "val": [...], "test": [...]}` time periods (val optional:
            without it `val_fraction` of the training period, the latest steps, validates).
        labels: a second store holding `label_variable` on the archive's times (default: the archive).
        preprocess_scheduler: where regridding runs (`datamodules.cache.engine.Scheduler`: None =
            a pool of `preprocess_workers` processes, or {"kind": "none" | "local" | "address" |
            "slurm", ...}, the `dask` config group).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        level: int = 5,
        variables: str | Sequence[str] = "climatenet4",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        method: str = "bilinear",
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        label_variable: str = "LABELS",
        nan_policy: str = "fill",
        preprocess_workers: int | None = None,
        progress: bool = True,
        shuffle_seed: int = 0,
        label_method: str = "nearest",
        splits: dict | None = None,
        labels: str | None = None,
        preprocess_scheduler: dict | str | None = None,
    ) -> None:
        super().__init__()
        self.source = str(data_dir)
        self.archive = splits is not None or is_archive(self.source)
        if self.archive and not splits:
            raise DataError(f"{self.source} is an archive: set data.splits (train/val/test time periods)")
        self.splits = {k: tuple(map(str, v)) for k, v in (splits or {}).items()}
        self.labels = labels
        self.scheduler = preprocess_scheduler
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self._default_cache()
        self.config = PreprocessConfig(
            int(level), resolve_variables(variables), method, label_variable, nan_policy, label_method
        )
        self.batch_size = int(batch_size)
        self.val_fraction = checked_fraction(val_fraction)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.drop_last = bool(drop_last)
        self.preprocess_workers = preprocess_workers or min(4, os.cpu_count() or 1)
        self.progress = progress
        self.shuffle_seed = int(shuffle_seed)
        self._normalization: Normalization | None = None
        self.train_set: ClimateDataset | None = None
        self.val_set: ClimateDataset | None = None
        self.test_set: ClimateDataset | None = None

    def _default_cache(self) -> Path:
        """`data_dir/.icocache`; for an archive the folder next to it (never inside a zarr store)."""
        if not self.archive:
            return self.data_dir / ".icocache"
        if "://" in self.source:
            raise DataError(f"{self.source} is remote: set data.cache_dir to a local folder for the vertex store")
        return Path(self.source.rstrip("/")).parent / ".icocache"

    # ---------------------------------------------------------------- properties
    @property
    def variables(self) -> tuple[str, ...]:
        return self.config.variables

    @property
    def level(self) -> int:
        return self.config.level

    @property
    def num_channels(self) -> int:
        return len(self.config.variables)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def normalization(self) -> Normalization:
        """Training-split statistics; available after setup() or load_state_dict()."""
        if self._normalization is None:
            raise RuntimeError("normalisation statistics are not known yet: call setup() or load_state_dict()")
        return self._normalization

    @property
    def class_frequencies(self) -> np.ndarray:
        return np.asarray(self.normalization.class_frequencies)

    def set_normalization(self, norm: Normalization | dict) -> None:
        """Use statistics from a checkpoint instead of computing them (eval / predict / resume).

        Datasets that already exist switch to them too: Lightning calls `setup()` before it
        restores the datamodule state from a checkpoint, so `load_state_dict` arrives after the
        datasets were built with statistics recomputed from `train/`.
        """
        norm = norm if isinstance(norm, Normalization) else Normalization.from_dict(norm)
        if norm.variables != self.variables or norm.level != self.level:
            raise ValueError(
                f"normalisation is for variables {norm.variables} at level {norm.level}, "
                f"but this datamodule uses {self.variables} at level {self.level}"
            )
        self._normalization = norm
        for dataset in (self.train_set, self.val_set, self.test_set):
            if dataset is not None:
                dataset.norm = norm

    def state_dict(self) -> dict:
        return {"normalization": self._normalization.to_dict()} if self._normalization else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("normalization"):
            self.set_normalization(state_dict["normalization"])

    # ---------------------------------------------------------------- preprocessing
    def _sources(self, split: str) -> list:
        if not self.archive:
            return split_files(self.data_dir, split)
        if split not in self.splits:
            raise EmptySplitError(f"no {split!r} period in data.splits for the archive {self.source}")
        return [ArchiveSource(self.source, self.splits[split], self.labels)]

    def _present(self) -> list[str]:
        if self.archive:
            return [s for s in ("train", "val", "test") if s in self.splits]
        return [s for s in ("train", "test") if (self.data_dir / s).is_dir() and list_netcdf(self.data_dir / s)]

    def _train_val(self) -> tuple[list[CacheEntry], list, list[CacheEntry], list]:
        """Training entries and samples, validation entries and samples (a configured period, else
        the latest `val_fraction` of the training samples)."""
        entries = self._entries("train")
        if "val" in self.splits:
            val_entries = self._entries("val")
            return entries, samples_by_time(entries), val_entries, samples_by_time(val_entries)
        train, val = split_validation(samples_by_time(entries), self.val_fraction)
        return entries, train, entries, val

    def _entries(self, split: str) -> list[CacheEntry]:
        return ensure_cache(
            self._sources(split),
            self.config,
            self.cache_dir,
            workers=self.preprocess_workers,
            progress=self.progress,
            desc=f"regridding {split} to level {self.level}",
            scheduler=self.scheduler,
        )

    def prepare_data(self) -> None:
        """Regrid every train and test file into the cache (once) and store the statistics."""
        present = self._present()
        if self._normalization is None and "train" not in present:
            self._sources("train")
        for split in present:
            if split == "train":
                entries, train, _, _ = self._train_val()
                stats_file = self.cache_dir / self.config.folder_name() / f"normalization-val{self.val_fraction:g}.json"
                self._statistics(entries, train).save(stats_file)
            else:
                self._entries(split)

    def _statistics(self, entries: Sequence[CacheEntry], samples: Sequence[tuple[int, int]]) -> Normalization:
        stats = [entry.stats() for entry in entries]
        parts = {key: np.stack([stats[e][key][t] for e, t in samples]) for key in stats[0]}
        return Normalization.from_partials(
            self.variables,
            parts["count"],
            parts["mean"],
            parts["m2"],
            parts["label_counts"],
            self.level,
            self.config.method,
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") or self._normalization is None:
            entries, train, val_entries, val = self._train_val()
            if self._normalization is None:
                self._normalization = self._statistics(entries, train)
            self.train_set = ClimateDataset(entries, train, self.normalization)
            self.val_set = ClimateDataset(val_entries, val, self.normalization)
        if stage in (None, "test"):
            entries = self._entries("test")
            self.test_set = ClimateDataset(entries, samples_by_time(entries), self.normalization)

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset: ClimateDataset | None, name: str, shuffle: bool) -> StatefulDataLoader:
        """Stateful loaders: Lightning saves the training loader's position and shuffle order in
        checkpoints, so a resume from a checkpoint written inside an epoch draws the remaining batches
        of that epoch exactly as the uninterrupted run would."""
        if dataset is None:
            raise RuntimeError(f"no {name} dataset: call setup() with the matching stage first")
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(dataset, self.shuffle_seed) if shuffle else evaluation_sampler(dataset, name),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=self.drop_last and shuffle,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, "training", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.val_set, "validation", shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.test_set, "test", shuffle=False)
