"""Reading CF lat-lon netCDF files into numpy, with errors that name the file and variable.

One `LatLonFile` wraps one open xarray dataset and reads time slabs of the selected fields as
float32 [t, C, nlat, nlon] and the labels as validated int64 [t, nlat, nlon]. Coordinates are
found by CF attributes (standard_name, units, axis) before names, so `lat`/`latitude`/custom
names all work. Each process opens its own files: handles are never shared across workers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from datamodules.regrid import latlon_to_ico
from icolightning.classes import NUM_CLASSES, short_legend
from icolightning.errors import DataFileError

_LAT_UNITS = {"degreesnorth", "degreenorth", "degreesn", "degreen"}
_LON_UNITS = {"degreeseast", "degreeeast", "degreese", "degreee"}
_NOT_LATLON = {
    "grid_latitude": "a rotated-pole grid",
    "grid_longitude": "a rotated-pole grid",
    "projection_x_coordinate": "a projected grid",
    "projection_y_coordinate": "a projected grid",
}
"""CF standard names of 1-D grid coordinates that are not geographic latitude/longitude."""
_DATE_IN_NAME = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def missing_variables_error(path: str | Path, ds: xr.Dataset, missing: Sequence[str]) -> DataFileError:
    """The error for requested variables that a file lacks, listing what it does have."""
    available = ", ".join(sorted(map(str, ds.data_vars))) or "none"
    return DataFileError(path, f"not in the file; it has the variables: {available}", ", ".join(missing))


def open_netcdf(path: str | Path) -> xr.Dataset:
    """Open lazily; unreadable, truncated or non-netCDF files raise DataFileError."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "file does not exist")
    try:
        try:
            return xr.open_dataset(path, engine="netcdf4", cache=False)
        except ValueError as exc:
            if "decode" not in str(exc) and "time" not in str(exc):
                raise
            return xr.open_dataset(path, engine="netcdf4", cache=False, decode_times=False)
    except Exception as exc:
        raise DataFileError(path, f"cannot be read as netCDF ({type(exc).__name__}: {exc})") from exc


def _normalised_units(var: xr.DataArray) -> str:
    return str(var.attrs.get("units", "")).lower().replace(" ", "").replace("_", "")


def _is_axis(ds: xr.Dataset, dim: str, kind: str) -> bool:
    names = {"lat": ("lat", "latitude", "lats"), "lon": ("lon", "longitude", "lons")}[kind]
    if dim not in ds.variables:
        return dim.lower() in names
    var = ds[dim]
    if var.attrs.get("standard_name") in _NOT_LATLON:
        return False
    units = _LAT_UNITS if kind == "lat" else _LON_UNITS
    axis = "Y" if kind == "lat" else "X"
    standard = "latitude" if kind == "lat" else "longitude"
    return (
        var.attrs.get("standard_name") == standard
        or _normalised_units(var) in units
        or (var.attrs.get("axis") == axis and var.ndim == 1 and _normalised_units(var).startswith("degree"))
        or dim.lower() in names
    )


def _refuse_non_latlon(ds: xr.Dataset, path: str | Path) -> None:
    """Rotated-pole and projected grids look rectilinear but are not latitude-longitude grids."""
    for dim in map(str, ds.dims):
        if dim not in ds.variables:
            continue
        var = ds[dim]
        standard, axis = var.attrs.get("standard_name"), var.attrs.get("axis")
        units = str(var.attrs.get("units", ""))
        if standard in _NOT_LATLON:
            reason = f"has standard_name {standard!r}: {_NOT_LATLON[standard]}"
        elif axis in ("X", "Y") and var.ndim == 1 and not _normalised_units(var).startswith("degree"):
            if _is_axis(ds, dim, "lat" if axis == "Y" else "lon"):
                continue  # recognised by its name, standard_name or units; the axis is extra
            reason = f"has axis {axis!r} but units {units!r}, not degrees: a projected grid"
        else:
            continue
        raise DataFileError(
            path,
            f"grid dimension {dim!r} {reason}, not a regular latitude-longitude grid; regrid the file "
            "to latitude-longitude first (e.g. with cdo remapbil or xESMF)",
        )


def find_latlon_dims(ds: xr.Dataset, path: str | Path) -> tuple[str, str]:
    """Names of the latitude and longitude dimensions (1-D coordinates of a rectilinear grid).

    Rotated-pole (`grid_latitude`/`grid_longitude`) and projected (`projection_x/y_coordinate`,
    or an X/Y axis in other units than degrees) grids are refused with a DataFileError.
    """
    _refuse_non_latlon(ds, path)
    found = {}
    for kind in ("lat", "lon"):
        matches = [d for d in ds.dims if _is_axis(ds, str(d), kind)]
        if len(matches) != 1:
            raise DataFileError(
                path,
                f"expected one {kind}itude dimension (CF standard_name/units or a name like "
                f"'{kind}'), found {matches or 'none'} among dimensions {list(ds.dims)}",
            )
        found[kind] = str(matches[0])
    return found["lat"], found["lon"]


def find_time_dim(ds: xr.Dataset, spatial: tuple[str, str]) -> str | None:
    """The dimension that indexes samples: named time, or CF time-like, or of datetime type."""
    for dim in ds.dims:
        if dim in spatial:
            continue
        var = ds.variables.get(dim)
        is_time = str(dim).lower() == "time" or (
            var is not None and (var.attrs.get("standard_name") == "time" or var.attrs.get("axis") == "T")
        )
        if is_time or (var is not None and np.issubdtype(var.dtype, np.datetime64)):
            return str(dim)
    return None


def grid_bounds(ds: xr.Dataset, path: str | Path, grid_dims: tuple[str, str]) -> tuple[np.ndarray | None, ...]:
    """CF cell bounds (the variables named by the `bounds` attribute of the lat and lon
    coordinates), [n, 2] each, None where a coordinate has none."""
    found = []
    for dim in grid_dims:
        name = ds[dim].attrs.get("bounds") if dim in ds.variables else None
        if name is None:
            found.append(None)
            continue
        if name not in ds.variables:
            raise DataFileError(path, f"names bounds {name!r}, which the file lacks", dim)
        values = np.asarray(ds[name].values, dtype=np.float64)
        if values.shape != (ds.sizes[dim], 2):
            raise DataFileError(path, f"bounds must have shape ({ds.sizes[dim]}, 2), got {values.shape}", name)
        found.append(values)
    return tuple(found)


def _iso(value: object) -> str | None:
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else str(np.datetime_as_string(value, unit="s"))
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else None


class LatLonFile:
    """The selected variables (and labels) of one lat-lon netCDF file, read by time slabs.

    Variables may have the dims (time, lat, lon) in any order, extra dimensions of size 1
    (e.g. a single pressure level) and no time dimension at all (then they hold for every
    step). Labels are read only when `label_variable` is given and must then exist.
    """

    def __init__(
        self,
        path: str | Path,
        variables: Sequence[str],
        label_variable: str | None = None,
        dataset: xr.Dataset | None = None,
    ) -> None:
        """`dataset`: an already opened dataset (an archive) that `path` names in errors."""
        self.path = Path(path)
        self.ds = open_netcdf(self.path) if dataset is None else dataset
        try:
            self.lat_dim, self.lon_dim = find_latlon_dims(self.ds, self.path)
            self.time_dim = find_time_dim(self.ds, (self.lat_dim, self.lon_dim))
            self.variables = tuple(variables)
            self.label_variable = label_variable
            wanted = [*self.variables, *([label_variable] if label_variable else [])]
            missing = [v for v in wanted if v not in self.ds.data_vars]
            if missing:
                raise missing_variables_error(self.path, self.ds, missing)
            for name in wanted:
                self._check_dims(name)
            self.lat = np.asarray(self.ds[self.lat_dim].values, dtype=np.float64)
            self.lon = np.asarray(self.ds[self.lon_dim].values, dtype=np.float64)
        except BaseException:
            self.ds.close()
            raise

    def __enter__(self) -> LatLonFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ds.close()

    @property
    def num_times(self) -> int:
        return int(self.ds.sizes[self.time_dim]) if self.time_dim else 1

    @property
    def times(self) -> list[str | None]:
        """ISO time of every step: the decoded time coordinate, else a date in the file name."""
        if self.time_dim and self.time_dim in self.ds.variables:
            decoded = [_iso(v) for v in self.ds[self.time_dim].values]
            if all(decoded):
                return decoded
        match = _DATE_IN_NAME.search(self.path.name)
        stamp = f"{match[1]}-{match[2]}-{match[3]}T00:00:00" if match else None
        return [stamp] * self.num_times

    @property
    def bounds(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """CF cell bounds ([nlat, 2], [nlon, 2]) of the grid coordinates, None where absent."""
        return grid_bounds(self.ds, self.path, (self.lat_dim, self.lon_dim))

    def _check_dims(self, name: str) -> None:
        var = self.ds[name]
        for dim in (self.lat_dim, self.lon_dim):
            if dim not in var.dims:
                raise DataFileError(self.path, f"has dims {var.dims}, missing the grid dimension {dim!r}", name)
        extra = {d: var.sizes[d] for d in var.dims if d not in (self.lat_dim, self.lon_dim, self.time_dim)}
        if any(size != 1 for size in extra.values()):
            raise DataFileError(self.path, f"has extra dimensions {extra}; select one level/member first", name)

    def _slab(self, name: str, start: int, stop: int) -> xr.DataArray:
        var = self.ds[name]
        var = var.isel({d: 0 for d in var.dims if d not in (self.lat_dim, self.lon_dim, self.time_dim)})
        if self.time_dim in var.dims:
            var = var.isel({self.time_dim: slice(start, stop)}).transpose(self.time_dim, self.lat_dim, self.lon_dim)
            return var
        var = var.transpose(self.lat_dim, self.lon_dim)
        return var.expand_dims({"_step": stop - start})

    def _load(self, name: str, start: int, stop: int) -> np.ndarray:
        """The decoded values of one variable's time slab; read errors name the file and variable."""
        try:
            return np.asarray(self._slab(name, start, stop).values)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DataFileError(self.path, f"cannot be read ({type(exc).__name__}: {exc})", name) from exc

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._load(name, start, stop), dtype=np.float32)

    def read_fields(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 [t, C, nlat, nlon]; missing values (_FillValue) come back as NaN, inf as it is."""
        stop = self.num_times if stop is None else stop
        out = np.empty((stop - start, len(self.variables), self.lat.size, self.lon.size), dtype=np.float32)
        for c, name in enumerate(self.variables):
            out[:, c] = self._read(name, start, stop)
        return out

    def read_vertices(
        self, level: int, method: str = "bilinear", start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fields regridded to the icosahedron, float32 [t, C, N], and missing points per variable.

        Each variable is regridded right after it is read, while it is still in the CPU cache,
        which makes regridding a small fraction of the read time. Non-finite source values
        (NaN, _FillValue, ±inf) count as missing and are skipped (see `latlon_to_ico`);
        vertices with no valid source are NaN. A grid that cannot be regridded (repeated
        latitudes, latitudes beyond ±90°, a single row) raises DataFileError.
        """
        stop = self.num_times if stop is None else stop
        lat_bounds, lon_bounds = self.bounds if method == "conservative" else (None, None)
        out, missing = [], []
        for name in self.variables:
            field = self._read(name, start, stop)
            if np.isfinite(field.sum(dtype=np.float64)):
                missing.append(0)
            else:
                bad = ~np.isfinite(field)
                missing.append(int(bad.sum()))
                field[bad] = np.nan
            try:
                out.append(latlon_to_ico(field, self.lat, self.lon, level, method, True, lat_bounds, lon_bounds))
            except ValueError as exc:
                raise DataFileError(self.path, f"cannot be regridded: {exc}", name) from exc
        return np.stack(out, axis=1), np.asarray(missing, dtype=np.int64)

    def read_labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """int64 [t, nlat, nlon] with every value checked to be a class in 0 .. NUM_CLASSES - 1."""
        if self.label_variable is None:
            raise ValueError("no label variable was requested")
        stop = self.num_times if stop is None else stop
        name = self.label_variable
        raw = self._load(name, start, stop)
        if np.issubdtype(raw.dtype, np.floating):
            if not np.isfinite(raw).all():
                missing = int((~np.isfinite(raw)).sum())
                raise DataFileError(self.path, f"{missing} missing (NaN/inf/_FillValue) labels", name)
            if not np.array_equal(raw, np.round(raw)):
                raise DataFileError(self.path, "labels must be whole numbers", name)
        labels = raw.astype(np.int64)
        bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
        if bad.size:
            raise DataFileError(self.path, f"labels must be {short_legend()}; found {bad[:10].tolist()}", name)
        return labels


def list_netcdf(folder: str | Path) -> list[Path]:
    """The *.nc / *.nc4 files of a folder, sorted by name; hidden (temporary) files are skipped."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix in {".nc", ".nc4"} and not p.name.startswith(".")]
    return sorted(files)
