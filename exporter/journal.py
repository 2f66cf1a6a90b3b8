"""The run's journal: what the training process was told, as JSON lines the monitor process replays.

Each rank appends to `rank<R>.jsonl` in the run directory one line per change the live page and
API show (the run's shape and model, each logged point, an evaluation, a checkpoint, the end),
never one per iteration. A line is written and flushed in one `write` of an O_APPEND file, so a
reader sees whole lines or a torn last one, which it leaves for the next read; the monitor reads
on from where it stopped, so a long run's journal is read once. Lines are {"event": NAME, ...};
exporter/runview.py lists the events.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def generate_run_id() -> str:
    """A time-sortable, label- and filesystem-safe id such as 20250101-120000-a1b2c3."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def run_directory(run_id: str, node: int = 0) -> Path:
    """Where a run's figures are written when nobody names a place: a per-user folder under the
    system's temp dir, one per run_id and node, so every rank of the run on this node finds the
    same one (and two "nodes" simulated on one machine do not)."""
    import tempfile

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(run_id)) or "run"
    return Path(tempfile.gettempdir()) / f"nanogpt-monitor-{os.getuid()}" / f"{safe}-node{int(node)}"


def pid_namespace() -> Optional[str]:
    """This process's PID namespace ("pid:[4026531836]"): a monitor checks a trainer's pid only in its own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux
        return None


def journal_path(directory: str | os.PathLike, rank: int) -> Path:
    return Path(directory) / f"rank{int(rank)}.jsonl"


def rank_of(path: Path) -> Optional[int]:
    """The rank a journal file belongs to, None for any other file."""
    name = path.name
    if name.startswith("rank") and name.endswith(".jsonl") and name[4:-6].isdigit():
        return int(name[4:-6])
    return None


class JournalWriter:
    """Appends event lines for one rank; a new writer starts the file afresh (a new process)."""

    def __init__(self, directory: str | os.PathLike, rank: int):
        self.path = journal_path(directory, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a new file (a new inode): the monitor's reader sees the restart
        self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        """One line, in one write: a reader never sees half of it followed by another line."""
        line = json.dumps(strict_json({"event": event, **fields}), separators=(",", ":"), allow_nan=False,
                          default=_plain).encode() + b"\n"
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line)

    def write_point(self, point_json: str) -> None:
        """A "point" event from a point's own JSON text (exporter.point), without parsing it again."""
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, b'{"event":"point","point":' + point_json.encode() + b"}\n")

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def strict_json(value: Any) -> Any:
    """Non-finite floats as null (JSON has no NaN; a NaN in a model config or a device reading
    must not cost the whole event; the monitor's answers use it too)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """What json cannot write as is: tuples are lists already; anything else becomes its text."""
    return str(value)


class JournalReader:
    """Reads the lines added to a journal since the last call (a torn last line waits for its end)."""

    MAX_READ_BYTES = 1 << 20  # per call (~4,000 points): replaying a long run's journal leaves the server answering

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._rest = b""
        self._inode: Optional[int] = None
        self.behind = False  # more was written than the last call read

    def read_new(self) -> list[dict]:
        """The complete event lines written since the last call, at most MAX_READ_BYTES of them
        (`behind` says whether more wait); [] when there are none. A file started afresh (a
        restarted trainer) is read from its start, after a {"event": "reset"}."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        events: list[dict] = []
        if self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self._offset):
            events.append({"event": "reset"})
            self._offset, self._rest = 0, b""
        self._inode = stat.st_ino
        if stat.st_size == self._offset:
            self.behind = False
            return events
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(min(stat.st_size - self._offset, self.MAX_READ_BYTES))
        self._offset += len(data)
        self.behind = self._offset < stat.st_size
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()  # b"" after a complete last line
        for number, line in enumerate(lines):
            try:
                event = json.loads(line)
            except ValueError as e:
                log.warning("%s: skipping a malformed journal line (%s)", self.path, e)
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                events.append(event)
        return events
