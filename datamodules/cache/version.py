"""The one version of the vertex-store cache: bump CACHE_VERSION whenever preprocessing changes.

Both kinds of cache entry (from lat-lon sources and from the papers' npz files) carry it in
their key and their attributes, so a bump rebuilds every cache.
"""

from __future__ import annotations

CACHE_VERSION = 4
REGRID_FINGERPRINTS: dict[int, str] = {
    2: "ac2e219bcffeed50",
    3: "9107f1fcd69424ef",
    4: "c5d6f7e1fdcb0d00",
}
"""`datamodules.regrid.regrid_fingerprint()` of the regridding each CACHE_VERSION was made with.

A test compares the current fingerprint with the entry of CACHE_VERSION: when the regridding
changes, bump CACHE_VERSION and add the new fingerprint here (old caches are then rebuilt).
Version 4: exact conservative overlaps, and the zarr vertex store."""
