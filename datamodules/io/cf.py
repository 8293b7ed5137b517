"""CF-convention details shared by the netCDF writers (predictions, regridded files, frequency maps),
so that the files pass a CF checker at the version they declare (tests/test_cf_compliance.py).

* Coordinate variables carry no `_FillValue` (CF §2.5.1); xarray adds one to float coordinates.
* Before CF-1.9 only byte, short and int are CF integer types (§2.2). A categorical variable in
  int64 or an unsigned type (ClimateNet's int64 `LABELS`) is written in the narrowest of these
  that holds its `flag_values` (int8 for the three classes), else int32; values that the type
  cannot hold are refused when written, never wrapped. From CF-1.9 on the dtype is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

CF_VERSION = "CF-1.8"
"""The Conventions of files that derive from no CF file of their own (predictions, frequency maps)."""
CF_INTEGER_TYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))
"""The integer types of every CF version (byte, short, int)."""
_EXTENDED_TYPES_FROM = (1, 9)
_VERSION = re.compile(r"CF-(\d+)\.(\d+)")
_TYPED_ATTRS = ("flag_values", "valid_range", "valid_min", "valid_max", "_FillValue", "missing_value")
"""Attributes CF requires in the variable's own type."""
_LATLON_ATTRS = {"lat": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
                 "lon": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}}


def cf_version(conventions: str | None) -> tuple[int, int] | None:
    """(major, minor) of the CF version a Conventions attribute names, or None."""
    found = _VERSION.search(conventions or "")
    return (int(found[1]), int(found[2])) if found else None


def cf_integer_dtype(dtype: np.dtype, attrs: Mapping[str, Any], conventions: str | None) -> np.dtype:
    """The type to store a categorical integer variable in, valid at the declared CF version.

    `attrs` holds its attributes and fill values: with `flag_values` the narrowest type holding
    them and the fill values is chosen, without them int32."""
    dtype = np.dtype(dtype)
    if dtype in CF_INTEGER_TYPES or (cf_version(conventions) or (0, 0)) >= _EXTENDED_TYPES_FROM:
        return dtype
    if attrs.get("flag_values") is None:
        return CF_INTEGER_TYPES[-1]
    needed = np.concatenate([np.ravel(attrs[key]) for key in _TYPED_ATTRS if attrs.get(key) is not None])
    for candidate in CF_INTEGER_TYPES:
        info = np.iinfo(candidate)
        if info.min <= needed.min() and needed.max() <= info.max:
            return candidate
    return CF_INTEGER_TYPES[-1]


def cast_typed(values: Mapping[str, Any], dtype: np.dtype, name: str) -> dict[str, Any]:
    """Attributes or encoding with flag values, valid range and fill values in `dtype` (CF §2.5.1, §3.5)."""
    out = dict(values)
    for key in _TYPED_ATTRS:
        if out.get(key) is not None:
            check_fits(f"{name}:{key}", np.asarray(out[key]), dtype)
            out[key] = np.asarray(out[key]).astype(dtype) if key != "_FillValue" else dtype.type(out[key])
    return out


def check_fits(name: str, values: np.ndarray, dtype: np.dtype) -> None:
    """Refuse integer `values` that the integer `dtype` cannot hold (numpy would silently wrap them)."""
    if not (np.issubdtype(dtype, np.integer) and np.issubdtype(values.dtype, np.integer) and values.size):
        return
    info, low, high = np.iinfo(dtype), values.min(), values.max()
    if low < info.min or high > info.max:
        raise ValueError(f"{name}: values {low}..{high} do not fit in {dtype}, the file's CF integer type")


def label_attrs(class_names: Sequence[str]) -> dict[str, Any]:
    """CF flag attributes (§3.5) of a class-label variable stored as int8."""
    return {"flag_values": np.arange(len(class_names), dtype=np.int8), "flag_meanings": " ".join(class_names)}


def latlon_coords(lat_dim: str, lon_dim: str, lat: np.ndarray, lon: np.ndarray,
                  attrs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, xr.DataArray]:
    """Latitude/longitude coordinate variables with their CF attributes (the given ones win)."""
    attrs = attrs or {}
    return {dim: xr.DataArray(values, dims=dim, attrs={**_LATLON_ATTRS[kind], **attrs.get(dim, {})})
            for dim, values, kind in ((lat_dim, lat, "lat"), (lon_dim, lon, "lon"))}


def without_coordinate_fill(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with no `_FillValue` written on coordinates without missing values (CF §2.5.1)."""
    out = ds.copy()
    for name, coord in out.coords.items():
        if not (np.issubdtype(coord.dtype, np.floating) and bool(np.isnan(coord.values).any())):
            out[name].attrs.pop("_FillValue", None)
            out[name].encoding["_FillValue"] = None
    return out
