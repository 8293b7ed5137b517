"""Convert a whole lat-lon netCDF file to an icosahedral one (the `icolightning-regrid` tool).

Every selected variable with both grid dimensions becomes (..., vertex); its other dimensions
(time, levels, ...) and attributes are kept, variables without grid dimensions are copied, and
per-vertex `lat`/`lon` coordinates are added. Variables stored as integers on disk (labels,
masks) use nearest neighbour or area-weighted majority (`label_method`), written back with their on-disk dtype and
_FillValue, even when a _FillValue made xarray decode them to float (in a CF integer type when the file
declares a CF version before 1.9: int64 labels with flag_values become int8, see `cf_integer_dtype`); packed integers
(scale_factor/add_offset) are continuous fields and are interpolated like floats. Work
proceeds one time step at a time and each step is appended to the output, so files larger than
memory are fine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from datamodules.io.atomic import atomic_path
from datamodules.io.cf import cast_typed, cf_integer_dtype
from datamodules.io.netcdf import (
    DataFileError,
    find_latlon_dims,
    find_time_dim,
    grid_bounds,
    missing_variables_error,
    open_netcdf,
)
from datamodules.io.slabs import SlabWriter
from datamodules.io.ugrid import NODE_ATTRS, add_mesh
from datamodules.regrid import LABEL_METHODS, METHODS, latlon_to_ico
from icolightning.grid import IcoGrid


def _select(ds: xr.Dataset, grid_dims: tuple[str, str], variables: Sequence[str] | None, path: Path) -> list[str]:
    gridded = [str(v) for v in ds.data_vars if set(grid_dims) <= set(ds[v].dims)]
    if not variables:
        if not gridded:
            raise DataFileError(path, f"no variable has both grid dimensions {grid_dims}")
        return gridded
    missing = [name for name in variables if name not in ds.data_vars]
    if missing:
        raise missing_variables_error(path, ds, missing)
    for name in variables:
        if name not in gridded:
            raise DataFileError(path, f"has dims {ds[name].dims}, not both grid dimensions {grid_dims}", name)
    return list(variables)


def stored_integer_dtype(var: xr.DataArray) -> np.dtype | None:
    """The on-disk integer dtype of a categorical variable (labels, masks), else None.

    xarray decodes integers with a _FillValue to float, so the decoded dtype does not tell;
    packed integers (scale_factor/add_offset) hold continuous values and are not categorical.
    """
    dtype = np.dtype(var.encoding.get("dtype", var.dtype))
    packed = any(key in var.encoding or key in var.attrs for key in ("scale_factor", "add_offset"))
    return dtype if np.issubdtype(dtype, np.integer) and not packed else None


def _vertex_coords(level: int) -> dict[str, xr.DataArray]:
    latlon = IcoGrid(level).latlon
    return {
        "lat": xr.DataArray(latlon[:, 0], dims="vertex", attrs={"units": "degrees_north", "standard_name": "latitude"}),
        "lon": xr.DataArray(latlon[:, 1], dims="vertex", attrs={"units": "degrees_east", "standard_name": "longitude"}),
    }


def _skeleton(ds: xr.Dataset, names: list[str], grid_dims: tuple[str, str], level: int, history: str) -> xr.Dataset:
    """Everything of the output except the regridded variables: the input's variables and coordinates
    without grid dimensions, per-vertex lat/lon, the global attributes and the history line."""
    keep = {str(v): ds[v] for v in ds.data_vars if v not in names and not set(ds[v].dims) & set(grid_dims)}
    other_coords = {str(c): ds[c] for c in ds.coords if not set(ds[c].dims) & set(grid_dims) and c not in grid_dims}
    out = xr.Dataset(keep, coords={**other_coords, **_vertex_coords(level)}, attrs=dict(ds.attrs))
    out.attrs["history"] = f"{ds.attrs['history']}\n{history}" if "history" in ds.attrs else history
    out.attrs["icosahedral_level"] = int(level)
    return add_mesh(out, level).load()


def _stored(name: str, var: xr.DataArray, dtype: np.dtype | None, conventions: str) -> tuple[dict, dict]:
    """(attributes, encoding) of an output variable: integers keep their on-disk dtype and fill values,
    in a type the file's CF version allows (with their flag values and fill values in it)."""
    attrs = {**var.attrs, **NODE_ATTRS}
    if dtype is None:
        return attrs, {}
    kept = {key: var.encoding[key] for key in ("_FillValue", "missing_value") if var.encoding.get(key) is not None}
    stored = cf_integer_dtype(dtype, {**var.attrs, **kept}, conventions)
    return cast_typed(attrs, stored, name), {"dtype": stored, **cast_typed(kept, stored, name)}


def regrid_netcdf(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    level: int,
    variables: Sequence[str] | None = None,
    method: str = "bilinear",
    progress: bool = True,
    label_method: str = "nearest",
) -> Path:
    """Regrid `variables` (default: all gridded ones) of `in_path` to level `level`; returns out_path.

    Float variables use `method`, integer ones `label_method` (nearest or majority). One time step
    of one variable is in memory at a time: each is regridded and appended to the output.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if label_method not in LABEL_METHODS:
        raise ValueError(f"label_method must be one of {LABEL_METHODS}, got {label_method!r}")
    in_path, out_path = Path(in_path), Path(out_path)
    n = IcoGrid(level).num_vertices
    with open_netcdf(in_path) as ds, atomic_path(out_path) as tmp:
        grid_dims = find_latlon_dims(ds, in_path)
        names = _select(ds, grid_dims, variables, in_path)
        lat, lon = ds[grid_dims[0]].values, ds[grid_dims[1]].values
        lead = {name: [d for d in ds[name].dims if d not in grid_dims] for name in names}
        steps_dim = find_time_dim(ds, grid_dims) or next((dims[0] for dims in lead.values() if dims), None)
        steps = ds.sizes[steps_dim] if steps_dim else 1
        integer = {name: stored_integer_dtype(ds[name]) for name in names}
        bounds = grid_bounds(ds, in_path, grid_dims)
        history = f"icolightning-regrid {in_path.name} --level {level} --method {method} --label-method {label_method}"
        writer = SlabWriter(tmp, _skeleton(ds, names, grid_dims, level, history))
        try:
            sizes = {**ds.sizes, "vertex": n}
            for name in names:
                writer.add_variable(name, (*lead[name], "vertex"), sizes, ds[name].dtype,
                                    *_stored(name, ds[name], integer[name], writer.nc.Conventions))
            for t in tqdm(range(steps), desc=f"regridding {in_path.name}", unit="step", disable=not progress):
                for name in names:
                    var = ds[name]
                    index: tuple = ()
                    if steps_dim in var.dims:
                        var = var.isel({steps_dim: t})
                        index = (slice(None),) * lead[name].index(steps_dim) + (t,)
                    elif t > 0:
                        continue
                    values = var.transpose(..., *grid_dims).values
                    categorical = integer[name] is not None or not np.issubdtype(values.dtype, np.floating)
                    try:
                        out = latlon_to_ico(values, lat, lon, level, label_method if categorical else method, True,
                                            *bounds)
                        writer.write(name, index, out.astype(ds[name].dtype, copy=False))
                    except ValueError as exc:
                        raise DataFileError(in_path, str(exc), name) from exc
        finally:
            writer.close()
    return out_path
