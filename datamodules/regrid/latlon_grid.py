"""Rectilinear lat-lon grids in any CF ordering, with the searches the matrices need.

Any CF ordering is accepted (ascending or descending latitude, longitudes in [0, 360) or
[-180, 180), a repeated cyclic column); indices always refer to the caller's array as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LON_TOL = 1e-9


def latlon_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] of points given in degrees."""
    phi, lam = np.deg2rad(np.asarray(lat, np.float64)), np.deg2rad(np.asarray(lon, np.float64))
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=-1)


@dataclass(frozen=True)
class LatLonGrid:
    """A rectilinear lat-lon grid in the caller's ordering, with sorted views for searching.

    `lon_sorted` starts after the largest longitude gap and increases (possibly past 360), so a
    regional grid that straddles 0° or 180° is one contiguous interval.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_order: np.ndarray
    lon_order: np.ndarray
    lat_sorted: np.ndarray
    lon_sorted: np.ndarray
    periodic: bool

    @classmethod
    def from_coords(cls, lat: np.ndarray, lon: np.ndarray) -> LatLonGrid:
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        if lat.size < 2 or lon.size < 2:
            raise ValueError(f"need at least 2 latitudes and 2 longitudes, got {lat.size} x {lon.size}")
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("latitude/longitude coordinates contain NaN or inf")
        if lat.min() < -90 - 1e-6 or lat.max() > 90 + 1e-6:
            raise ValueError(f"latitudes must lie in [-90, 90], got [{lat.min()}, {lat.max()}]")
        lat = np.clip(lat, -90.0, 90.0)
        lat_order = np.argsort(lat, kind="stable")
        lat_sorted = lat[lat_order]
        if np.any(np.diff(lat_sorted) <= 0):
            raise ValueError("latitudes must be strictly monotonic (no repeated rows)")
        wrapped = np.mod(lon, 360.0)
        wrapped[wrapped >= 360.0 - LON_TOL] = 0.0
        unique, first = np.unique(np.round(wrapped, 9), return_index=True)
        gaps = np.diff(np.append(unique, unique[0] + 360.0))
        start = (int(np.argmax(gaps)) + 1) % unique.size
        lon_order = np.roll(first, -start)
        lon_sorted = np.roll(unique, -start)
        lon_sorted = lon_sorted[0] + np.mod(lon_sorted - lon_sorted[0], 360.0)
        periodic = bool(gaps.max() <= 1.5 * np.delete(gaps, np.argmax(gaps)).max())
        return cls(lat, lon, lat_order, lon_order, lat_sorted, lon_sorted, periodic)

    @property
    def num_points(self) -> int:
        return self.lat.size * self.lon.size

    def flat_index(self, sorted_row: np.ndarray, sorted_col: np.ndarray) -> np.ndarray:
        """Index into the caller's flattened [nlat * nlon] array of sorted (row, col) positions."""
        return self.lat_order[sorted_row] * self.lon.size + self.lon_order[sorted_col]

    def xyz(self) -> np.ndarray:
        """[nlat * nlon, 3] unit vectors in the caller's (row-major) order."""
        lat, lon = np.meshgrid(self.lat, self.lon, indexing="ij")
        return latlon_xyz(lat.reshape(-1), lon.reshape(-1))

    def cap_reaches_pole(self, north: bool) -> bool:
        """Whether the polar cap beyond the outermost row may be interpolated towards the pole.

        Only for grids that go all the way round and whose outermost row is at most 1.5 row
        spacings from the pole (Gaussian and cell-centred global grids); anything further is a
        regional grid, and the cap is outside it.
        """
        lat_s = self.lat_sorted
        gap, spacing = (90.0 - lat_s[-1], lat_s[-1] - lat_s[-2]) if north else (lat_s[0] + 90.0, lat_s[1] - lat_s[0])
        return self.periodic and gap <= 1.5 * spacing

    def locate(self, tlat: np.ndarray, tlon: np.ndarray) -> tuple[np.ndarray, ...]:
        """Bilinear bracket of target points in sorted positions.

        Returns (covered, row0, row1, b, col0, col1, a, cap): interpolation is between rows
        row0/row1 with fraction b and columns col0/col1 with fraction a; cap is the share of the
        pole value (the mean of row0) for targets between the outermost row and the pole.
        Targets outside a regional grid are not covered.
        """
        lat_s, lon_s = self.lat_sorted, self.lon_sorted
        nlat, nlon = lat_s.size, lon_s.size
        pos = lon_s - lon_s[0]
        u = np.mod(np.asarray(tlon, np.float64) - lon_s[0], 360.0)
        u[u >= 360.0 - LON_TOL] = 0.0
        col0 = np.clip(np.searchsorted(pos, u, side="right") - 1, 0, nlon - 1)
        inner = col0 < nlon - 1
        col1 = np.where(inner, col0 + 1, 0)
        right = np.where(inner, pos[np.minimum(col0 + 1, nlon - 1)], 360.0)
        a = np.clip((u - pos[col0]) / (right - pos[col0]), 0.0, 1.0)
        lon_inside = inner | (u <= pos[-1] + LON_TOL)
        if not self.periodic:
            a = np.where(inner, a, 0.0)

        tlat = np.clip(np.asarray(tlat, np.float64), -90.0, 90.0)
        i = np.searchsorted(lat_s, tlat, side="right") - 1
        north, south = tlat > lat_s[-1], tlat < lat_s[0]
        row0 = np.clip(i, 0, nlat - 1)
        row1 = np.minimum(row0 + 1, nlat - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(row1 > row0, (tlat - lat_s[row0]) / (lat_s[row1] - lat_s[row0]), 0.0)
            cap_north = (tlat - lat_s[-1]) / (90.0 - lat_s[-1])
            cap_south = (lat_s[0] - tlat) / (lat_s[0] + 90.0)
        cap = np.where(north, cap_north, np.where(south, cap_south, 0.0))
        b = np.where(north | south, 0.0, b)
        at_pole = np.abs(tlat) >= 90.0
        pole_row = np.where(tlat > 0, lat_s[-1] >= 90.0, lat_s[0] <= -90.0)
        cap = np.where(at_pole, 1.0, np.nan_to_num(cap))
        cap_ok = np.where(tlat > 0, self.cap_reaches_pole(north=True), self.cap_reaches_pole(north=False))
        in_lat_range = ~(north | south)
        covered = (in_lat_range & (lon_inside | self.periodic)) | ((north | south) & cap_ok)
        covered |= at_pole & (pole_row | cap_ok)
        return covered, row0, row1, b, col0, col1, a, cap
