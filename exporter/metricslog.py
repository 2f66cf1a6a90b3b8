"""The metrics log: every logged point of a run as a JSON line on disk, complete at full resolution,
and the samples the model wrote (lines with a "sample" key, exporter.samples).

It is what the CSV export reads and what a resumed run reloads its history from. Each line is
flushed as written; lines a full disk refused wait, bounded, and go out with the next write that
succeeds; reading skips a line torn by a kill.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Iterator, Optional

from .point import Point
from .samples import Sample

log = logging.getLogger(__name__)


class MetricsLog:
    """JSON lines on disk, one per logged point, appended and flushed as they come."""

    # Lines that could not be written (disk full) wait here, bounded, and go out with the
    # next write that succeeds, so a full disk leaves no gap once space comes back.
    MAX_PENDING = 100_000

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: Optional[io.TextIOWrapper] = None
        self._lock = threading.Lock()
        self._pending: deque[str] = deque(maxlen=self.MAX_PENDING)

    def append(self, point: Point) -> None:
        """Write one point as a line and flush it (the file is opened on first use).

        On an OSError the line (and any earlier unwritten ones) is kept for the next
        append and the error re-raised for the caller to count."""
        self._write(point.json)

    def append_sample(self, sample: Sample) -> None:
        """Write one sample as a line, as `append` writes a point."""
        self._write(sample.json)

    def _write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line + "\n")
            try:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # line-buffered
                    if self._file.tell() > 0 and not self._ends_with_newline():
                        self._file.write("\n")  # seal a line torn by an earlier failed write
                while self._pending:
                    self._file.write(self._pending[0])
                    self._file.flush()
                    self._pending.popleft()
            except OSError:
                self._drop_file_locked()  # reopen next time: the buffer may hold a torn line
                raise

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _drop_file_locked(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the failed flush is retried from _pending, not from this buffer
            self._file = None

    def read(self) -> Iterator[Point]:
        """Every complete, well-formed point in the file, oldest first. A line re-logging the
        iteration of the line before it replaces it (an eval merged after the log point).
        A torn last line (kill -9 mid-write) and malformed lines are skipped with a warning."""
        previous: Optional[Point] = None
        for point in self._parse():
            if not isinstance(point, Point):
                continue
            if previous is not None and point.iteration != previous.iteration:
                yield previous
            previous = point
        if previous is not None:
            yield previous

    def samples(self) -> Iterator[Sample]:
        """Every complete, well-formed sample in the file, oldest first."""
        return (record for record in self._parse() if isinstance(record, Sample))

    def _parse(self) -> Iterator[Point | Sample]:
        try:
            handle = open(self.path, "r", encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    log.warning("%s:%d: skipping a truncated last line", self.path, number)
                    return
                try:
                    data = json.loads(line)
                    yield Sample.from_json(data) if isinstance(data, dict) and "sample" in data \
                        else Point.from_json(data)
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    log.warning("%s:%d: skipping a malformed line (%s)", self.path, number, e)

    def rewrite(self, last_iteration: int) -> tuple[list[Point], list[Point]]:
        """Keep only the points and samples with iteration <= last_iteration (a resume),
        atomically; returns (the points kept, the points dropped: the iterations to be redone)."""
        points = list(self.read())
        kept = [p for p in points if p.iteration <= last_iteration]
        dropped = [p for p in points if p.iteration > last_iteration]
        samples = [s for s in self.samples() if s.iteration <= last_iteration]
        with self._lock:
            self._close_locked()
            if not self.path.exists() and not kept:
                return kept, dropped
            tmp = self.path.with_name(self.path.name + ".tmp")
            records = sorted([*kept, *samples], key=lambda r: (r.iteration, isinstance(r, Sample)))  # stable
            tmp.write_text("".join(record.json + "\n" for record in records), encoding="utf-8")
            os.replace(tmp, self.path)
        return kept, dropped

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
