"""Atomic file writes: a reader, or the next run after a crash, sees the old file or the new one, never half.

Used for checkpoints and the encoded-data cache. Each step is there for a reason:
- the temp file is in the target's directory, because a rename is atomic only
  within one filesystem;
- it is fsynced before the rename, or a crash soon after can leave the target
  name pointing at an empty or partial file (the data may still be in the page cache);
- os.replace renames over the target in one step (concurrent DDP ranks writing
  the same cache file each rename a complete file; the last one wins);
- the directory is fsynced after the rename, or the rename itself may not
  survive a power loss.
A write that raises removes its temp file. A process killed mid-write leaves
one behind, named `.<name>.<random>.tmp` (see temp_files), for its owner to clear.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "temp_files"]


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside `path` for binary writing; on a clean exit it replaces `path` durably."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave our own temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temp files that atomic_write(path) calls left behind (killed mid-write, or still writing)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))
