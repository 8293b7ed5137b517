"""Per-channel normalisation statistics and class frequencies, portable through checkpoints.

They are computed from the training split only and must travel with a trained model, so the
object converts to and from a dict of plain Python values (`to_dict` / `from_dict`) that a
Lightning checkpoint or Hydra config can carry, and to and from a JSON file (`save` / `load`), the
readable copy that every datamodule keeps next to its cache. These four are the only ways
statistics are persisted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from datamodules.io.atomic import atomic_path
from icolightning.errors import DataFileError


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of the training split, class frequencies, and the grid they are for.

    `apply` standardises raw vertex fields with them; `level` and `method` record the
    icosahedral level and the regridding method, so that data regridded otherwise is refused.
    """

    variables: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_frequencies: tuple[float, ...]
    """Fraction of training vertices in each class (BG, TC, AR)."""
    num_samples: int
    level: int
    method: str

    def __post_init__(self) -> None:
        if not len(self.variables) == len(self.mean) == len(self.std):
            raise ValueError("variables, mean and std must have the same length")

    @classmethod
    def from_partials(
        cls,
        variables: tuple[str, ...],
        count: np.ndarray,
        mean: np.ndarray,
        m2: np.ndarray,
        label_counts: np.ndarray,
        level: int,
        method: str,
    ) -> Normalization:
        """Combine per-sample [S, C] (count, mean, M2) with Chan's formula; [S, K] label counts."""
        total = count.sum(0)
        if (total == 0).any():
            empty = [v for v, n in zip(variables, total, strict=True) if n == 0]
            raise ValueError(f"no valid training values for {empty}")
        with np.errstate(invalid="ignore", over="ignore"):
            grand = (count * mean).sum(0) / total
            spread = (m2 + count * (mean - grand) ** 2).sum(0) / total
        std = np.sqrt(spread)
        bad = ~(np.isfinite(grand) & np.isfinite(std))
        if bad.any():
            names = [v for v, b in zip(variables, bad, strict=True) if b]
            raise ValueError(
                f"training statistics of {names} are not finite (mean {grand[bad].tolist()}, std "
                f"{std[bad].tolist()}); the data holds inf/NaN values that were not treated as missing"
            )
        std = np.where(std > 1e-12 * np.maximum(np.abs(grand), 1.0), std, 1.0)
        labels = label_counts.sum(0).astype(np.float64)
        return cls(
            variables=tuple(variables),
            mean=tuple(float(v) for v in grand),
            std=tuple(float(v) for v in std),
            class_frequencies=tuple(float(v) for v in labels / max(labels.sum(), 1.0)),
            num_samples=int(count.shape[0]),
            level=int(level),
            method=str(method),
        )

    def to_dict(self) -> dict:
        return {
            "variables": list(self.variables),
            "mean": list(self.mean),
            "std": list(self.std),
            "class_frequencies": list(self.class_frequencies),
            "num_samples": self.num_samples,
            "level": self.level,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, state: Mapping) -> Normalization:
        return cls(
            variables=tuple(state["variables"]),
            mean=tuple(float(v) for v in state["mean"]),
            std=tuple(float(v) for v in state["std"]),
            class_frequencies=tuple(float(v) for v in state["class_frequencies"]),
            num_samples=int(state["num_samples"]),
            level=int(state["level"]),
            method=str(state["method"]),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` as JSON, atomically (a concurrent reader never sees half a file).

        JSON writes each float as its shortest exact decimal, so `load` gives back an equal object.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Normalization:
        """The statistics that `save` wrote; a DataFileError naming the file if it holds something else."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataFileError(path, f"not a normalisation statistics file ({type(exc).__name__}: {exc})") from exc

    @cached_property
    def _shift_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 [C, 1] mean and 1/std, made once (`apply` runs for every sample)."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        return mean, 1.0 / np.asarray(self.std, dtype=np.float32)[:, None]

    def apply(self, fields: np.ndarray) -> np.ndarray:
        """[..., C, N] raw -> float32 normalised; vertices without data (NaN, ±inf) become 0, the mean.

        Two passes over the sample and one mask, the loader's main cost after the read."""
        mean, inv_std = self._shift_scale
        out = np.subtract(fields, mean, dtype=np.float32)
        out *= inv_std
        np.copyto(out, 0.0, where=~np.isfinite(out))
        return out
