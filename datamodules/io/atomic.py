"""Atomic file writes: write to a temporary file next to the target, then rename it into place."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path next to `target`; on success it replaces `target`.

    The temporary sits in the same folder (so `os.replace` is an atomic rename on one file
    system) and starts with a dot (so folder listings such as `list_netcdf` skip it). If the
    body raises, the temporary is removed and `target` is left as it was.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
