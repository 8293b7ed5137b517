"""Prediction on arbitrary lat-lon netCDF files, and writing masks back on their own grid.

The input goes through the same reader and regridding as training (but not the cache: a file
to predict on is read once) and is normalised with the statistics of the trained model, which
the caller passes in (e.g. from the checkpoint). Predicted vertex labels return to the file's
lat-lon grid by nearest neighbour, probabilities by barycentric interpolation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from datamodules.atomic import atomic_path
from datamodules.layout import CLASS_NAMES, LABEL_VARIABLE
from datamodules.netcdf_io import DataFileError, LatLonFile
from datamodules.normalization import Normalization
from datamodules.regrid import ico_to_latlon


@dataclass
class PredictionInput:
    """Normalised vertex tensors of one file plus what is needed to write results back."""

    path: Path
    x: torch.Tensor
    """[T, C, N] float32, normalised like the training data."""
    lat: np.ndarray
    lon: np.ndarray
    lat_dim: str
    lon_dim: str
    time_dim: str | None
    coords: xr.Dataset = field(repr=False)
    """The file's lat/lon/time coordinates (with attributes), copied into the output."""
    nan_vertices: dict[str, int] = field(default_factory=dict)


def load_for_prediction(
    path: str | os.PathLike, normalization: Normalization | Mapping, method: str | None = None
) -> PredictionInput:
    """Read the model's variables from any CF lat-lon file and return normalised vertex tensors.

    `normalization` is a `Normalization` or its `to_dict()` (as stored in a checkpoint); it also
    fixes the variables, the level and, unless `method` is given, the regridding method.
    Missing values are skipped when regridding and vertices without data get the training mean.
    Problems with the file (variables, grid) raise DataFileError naming it.
    """
    norm = normalization if isinstance(normalization, Normalization) else Normalization.from_dict(normalization)
    with LatLonFile(path, norm.variables) as data:
        try:
            ico, _ = data.read_vertices(norm.level, method or norm.method)
        except DataFileError:
            raise
        except ValueError as exc:
            raise DataFileError(path, f"cannot be regridded: {exc}", ", ".join(norm.variables)) from exc
        keep = [d for d in (data.time_dim, data.lat_dim, data.lon_dim) if d and d in data.ds.variables]
        coords = data.ds[keep].load() if keep else xr.Dataset()
        nan_vertices = dict(zip(norm.variables, np.isnan(ico).sum(axis=(0, 2)).tolist(), strict=True))
        return PredictionInput(
            path=Path(path),
            x=torch.from_numpy(norm.apply(ico)),
            lat=data.lat,
            lon=data.lon,
            lat_dim=data.lat_dim,
            lon_dim=data.lon_dim,
            time_dim=data.time_dim,
            coords=coords,
            nan_vertices=nan_vertices,
        )


def _numpy(values: np.ndarray | torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def write_prediction(
    out_path: str | os.PathLike,
    inputs: PredictionInput,
    labels: np.ndarray | torch.Tensor,
    probabilities: np.ndarray | torch.Tensor | None = None,
    label_method: str = "nearest",
    method: str = "bilinear",
) -> Path:
    """Write predicted `labels` [T, N] (and optional `probabilities` [T, K, N]) on the input's grid.

    The output has `LABELS` (time, lat, lon) int8 with CF flag attributes and, if given,
    `PROBABILITIES` (time, class, lat, lon) float32; coordinates are copied from the input
    file. Masks go back by `label_method` (nearest, or majority: the class covering most of each
    cell), probabilities by `method` (bilinear or conservative). Written to a temporary name
    first, then renamed.
    """
    labels = _numpy(labels)
    steps = inputs.x.shape[0]
    if labels.shape != (steps, inputs.x.shape[-1]):
        raise ValueError(f"labels must be [T, N] = {(steps, inputs.x.shape[-1])}, got {labels.shape}")
    time_dim = inputs.time_dim or "time"
    dims = (time_dim, inputs.lat_dim, inputs.lon_dim)
    mask = ico_to_latlon(labels.astype(np.int8), inputs.lat, inputs.lon, method=label_method)
    out = xr.Dataset(coords=inputs.coords.coords)
    out[LABEL_VARIABLE] = xr.DataArray(mask, dims=dims)
    out[LABEL_VARIABLE].attrs = {
        "long_name": "Predicted labels: 0 = background, 1 = tropical cyclone, 2 = atmospheric river",
        "flag_values": np.arange(len(CLASS_NAMES), dtype=np.int8),
        "flag_meanings": " ".join(CLASS_NAMES),
    }
    if probabilities is not None:
        probs = ico_to_latlon(_numpy(probabilities).astype(np.float32), inputs.lat, inputs.lon, method=method)
        out["PROBABILITIES"] = xr.DataArray(probs, dims=(dims[0], "class", *dims[1:]))
        out["PROBABILITIES"].attrs = {
            "long_name": "Predicted class probabilities",
            "classes": " ".join(CLASS_NAMES),
        }
    out.attrs = {"title": "icolightning predictions", "source_file": str(inputs.path)}
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        out.to_netcdf(tmp, engine="netcdf4")
    return out_path
