"""Atomic file writes: write to a temporary file next to the target, then rename it into place."""

from __future__ import annotations

import os
import re
import shutil
import socket
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
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path(target: Path) -> Path:
    """`.NAME.HOST.PID-RANDOM.tmp` next to `target`: host and PID say whose it is (see below)."""
    return target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporaries of `target` that a killed process of this host left behind.

    Only names this module writes count, and only those whose process is gone: another host's
    temporaries (a shared file system) and a live process's are never touched.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?P<host>.+)\.(?P<pid>\d+)-[0-9a-f]{{8}}\.tmp")
    removed = []
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        found = pattern.fullmatch(path.name)
        if found and found["host"] == socket.gethostname() and not _alive(int(found["pid"])):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
