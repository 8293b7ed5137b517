"""Lat-lon <-> icosahedral regridding (bilinear, nearest, conservative; labels nearest or by
area-weighted majority) through cached sparse matrices. The public entry points are here."""

from datamodules.regrid.interpolation import locate_in_triangles
from datamodules.regrid.latlon_grid import LatLonGrid, latlon_xyz
from datamodules.regrid.matrix import RegridMatrix, matrix_from_triplets
from datamodules.regrid.remap import (
    LABEL_METHODS,
    METHODS,
    class_fractions,
    clear_matrix_cache,
    ico_to_latlon,
    latlon_to_ico,
    regrid_fingerprint,
    regrid_matrix,
)

__all__ = [
    "LABEL_METHODS",
    "METHODS",
    "LatLonGrid",
    "RegridMatrix",
    "class_fractions",
    "clear_matrix_cache",
    "ico_to_latlon",
    "latlon_to_ico",
    "latlon_xyz",
    "locate_in_triangles",
    "matrix_from_triplets",
    "regrid_fingerprint",
    "regrid_matrix",
]
