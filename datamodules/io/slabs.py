"""netCDF output written slab by slab, so memory does not grow with the number of time steps.

xarray writes a whole Dataset at once; here it writes only the skeleton (coordinates, small
variables, attributes) and every large variable is then created and filled in pieces with
netCDF4, each piece encoded by xarray's own CF encoder (dtype, _FillValue), so the file reads
back exactly as if xarray had written it in one go. Coordinates get no _FillValue (CF §2.5.1) and
integers that the stored type cannot hold are refused rather than wrapped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import netCDF4
import numpy as np
import xarray as xr
from xarray.conventions import encode_cf_variable

from datamodules.io.cf import check_fits, without_coordinate_fill


class SlabWriter:
    """Append variables to a netCDF file whose skeleton xarray has written; fill them by slabs."""

    def __init__(self, path: str | os.PathLike, skeleton: xr.Dataset) -> None:
        without_coordinate_fill(skeleton).to_netcdf(path, engine="netcdf4")
        self.nc = netCDF4.Dataset(path, "a")
        self._specs: dict[str, tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]] = {}

    def add_variable(self, name: str, dims: Sequence[str], sizes: Mapping[str, int], dtype: np.dtype,
                     attrs: Mapping[str, Any] | None = None, encoding: Mapping[str, Any] | None = None,
                     whole_dims: int = 1) -> None:
        """Declare `name` (dims, decoded dtype, attributes, xarray encoding); dims are created as needed.

        A storage chunk holds one index of every leading dim and all of the last `whole_dims` dims
        (the grid), which is what one slab write touches.
        """
        dims = tuple(dims)
        for dim in dims:
            if dim not in self.nc.dimensions:
                self.nc.createDimension(dim, sizes[dim])
        attrs, encoding = dict(attrs or {}), dict(encoding or {})
        template = encode_cf_variable(xr.Variable(dims, np.zeros((1,) * len(dims), dtype), attrs, encoding), name=name)
        stored_attrs = dict(template.attrs)
        fill = stored_attrs.pop("_FillValue", template.encoding.get("_FillValue"))
        chunks = tuple(max(1, sizes[d]) if i >= len(dims) - whole_dims else 1 for i, d in enumerate(dims))
        var = self.nc.createVariable(name, template.dtype, dims, fill_value=fill, chunksizes=chunks)
        var.set_auto_maskandscale(False)
        var.setncatts(stored_attrs)
        self._specs[name] = (dims, attrs, encoding)

    def write(self, name: str, index: tuple[Any, ...], values: np.ndarray) -> None:
        """Store decoded `values` at `index` (a tuple of ints and slices over the leading dims)."""
        dims, attrs, encoding = self._specs[name]
        values = np.asarray(values)
        check_fits(name, values, np.dtype(encoding.get("dtype", values.dtype)))
        kept = [d for d, i in zip(dims, index, strict=False) if not isinstance(i, int | np.integer)]
        kept += list(dims[len(index):])
        encoded = encode_cf_variable(xr.Variable(kept, values, attrs, encoding), name=name)
        self.nc[name][index] = np.asarray(encoded.values)

    def close(self) -> None:
        self.nc.close()
