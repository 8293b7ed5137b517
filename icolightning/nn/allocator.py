"""Keep freed host memory for reuse instead of handing it back to the kernel on every step.

glibc serves blocks above its mmap threshold (at most 32 MiB on 64-bit, the size of a level-5
padded activation of a few channels) with a fresh `mmap` and unmaps them on `free`, so each
training step page-faults all its large activations in again (kernel time, not compute). With
mmap switched off for the heap and a large trim threshold, freed blocks stay in the heap and the
next step reuses them. Other C libraries, and CUDA tensors (PyTorch caches those itself), are
left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD_BYTES = 1 << 30
_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Make glibc keep freed large blocks (idempotent). True when glibc took the settings."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    return _applied
