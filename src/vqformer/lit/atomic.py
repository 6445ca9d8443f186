"""Atomic file writes that survive a kill at any moment, also on network filesystems.

The temporary file is created in the destination's own directory (a rename across filesystems is a copy,
which a kill leaves half done), flushed and fsynced, then renamed over the destination; the directory is
fsynced so the rename itself is durable.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from ..data.files import fsync_dir

TMP_MARK = ".tmp-"   # temporary files are named ".<name>.tmp-<random>" beside their destination
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp's 0600 would hide checkpoints from the rest of a group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Temporary files left by a killed writer (never renamed: never a valid file)."""
    removed = []
    if directory.is_dir():
        for p in directory.glob(f".*{TMP_MARK}*"):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
