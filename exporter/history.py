"""The logged history: bounded in memory, complete on disk.

`History` keeps every logged point of a run in memory while the run is short,
and a bounded number over a million-iteration run: the newest `recent` points
at full resolution, and older points thinned (each time the older range fills
up, every second point of it is dropped, so its resolution halves as it ages).
`MetricsLog` appends each point as one JSON line to a file (flushed per line),
so the CSV export is complete at full resolution, and a resumed run reloads
the history it had. Neither knows about Prometheus or HTTP.

Non-finite floats are kept as floats in memory and written as JSON null (JSON
has no NaN); readers get None back for them.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterable, Iterator, Optional

log = logging.getLogger(__name__)

RECENT_POINTS = 10_000  # newest points kept at full resolution
OLDER_POINTS = 2_000  # cap on thinned older points: memory stays <= RECENT + OLDER points


@dataclass(frozen=True)
class Point:
    """One logged iteration. JSON keys and CSV columns are these field names, in this order."""

    iteration: int
    loss: float
    lr: Optional[float] = None
    step_seconds: Optional[float] = None
    tokens_per_second: Optional[float] = None
    elapsed_seconds: Optional[float] = None
    timestamp: Optional[float] = None  # unix seconds
    grad_norm: Optional[float] = None
    mfu: Optional[float] = None
    loss_ema: Optional[float] = None
    val_loss: Optional[float] = None  # only where an eval ran at this iteration
    eval_train_loss: Optional[float] = None

    def to_json(self) -> dict:
        """A JSON-safe dict: non-finite floats become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "Point":
        """The point a `to_json` dict came from (unknown keys ignored; ValueError if malformed)."""
        if not isinstance(data, dict) or not isinstance(data.get("iteration"), int):
            raise ValueError("a history point needs an integer iteration")
        values = {f.name: data.get(f.name) for f in fields(cls)}
        for name, value in values.items():
            if name != "iteration" and value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"history field {name} is not a number: {value!r}")
        return cls(**values)


COLUMNS = tuple(f.name for f in fields(Point))


class History:
    """Thread-safe, bounded, iteration-ordered list of points (appended by the training thread)."""

    def __init__(self, recent: int = RECENT_POINTS, older: int = OLDER_POINTS):
        if recent < 1 or older < 2:
            raise ValueError("history needs recent >= 1 and older >= 2")
        self._recent_cap, self._older_cap = recent, older
        self._older: list[Point] = []  # thinned, iteration order
        self._recent: list[Point] = []  # full resolution, iteration order
        self._lock = threading.Lock()

    def append(self, point: Point) -> None:
        """Add a point. A point at an iteration already held replaces it and everything after
        it (a re-logged or resumed iteration), so iterations stay strictly increasing."""
        with self._lock:
            if self._recent and point.iteration <= self._recent[-1].iteration:
                self._truncate_locked(point.iteration - 1)
            self._recent.append(point)
            if len(self._recent) > self._recent_cap:
                self._older.append(self._recent.pop(0))
                if len(self._older) > self._older_cap:
                    self._older = self._older[::2]

    def amend_last(self, iteration: int, **values) -> Optional[Point]:
        """Set fields of the newest point if it is at `iteration`; returns the new point or None."""
        with self._lock:
            if not self._recent or self._recent[-1].iteration != iteration:
                return None
            self._recent[-1] = replace(self._recent[-1], **values)
            return self._recent[-1]

    def truncate(self, last_iteration: int) -> None:
        """Drop the points with iteration > last_iteration."""
        with self._lock:
            self._truncate_locked(last_iteration)

    def _truncate_locked(self, last_iteration: int) -> None:
        for part in (self._recent, self._older):
            keys = [p.iteration for p in part]
            del part[bisect.bisect_right(keys, last_iteration):]

    def since(self, iteration: Optional[int] = None) -> list[Point]:
        """The points with iteration > `iteration` (all of them for None), oldest first."""
        with self._lock:
            points = self._older + self._recent
        if iteration is None:
            return points
        return points[bisect.bisect_right([p.iteration for p in points], iteration):]

    def last(self) -> Optional[Point]:
        with self._lock:
            return self._recent[-1] if self._recent else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._older) + len(self._recent)


class MetricsLog:
    """JSON lines on disk, one per logged point, appended and flushed as they come."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: Optional[io.TextIOWrapper] = None
        self._lock = threading.Lock()

    def append(self, point: Point) -> None:
        """Write one point as a line and flush it (the file is opened on first use)."""
        line = json.dumps(point.to_json(), separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # line-buffered
            self._file.write(line)
            self._file.flush()

    def read(self) -> Iterator[Point]:
        """Every complete, well-formed point in the file, oldest first. A line re-logging the
        iteration of the line before it replaces it (an eval merged after the log point).
        A torn last line (kill -9 mid-write) and malformed lines are skipped with a warning."""
        previous: Optional[Point] = None
        for point in self._parse():
            if previous is not None and point.iteration != previous.iteration:
                yield previous
            previous = point
        if previous is not None:
            yield previous

    def _parse(self) -> Iterator[Point]:
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
                    yield Point.from_json(json.loads(line))
                except ValueError as e:  # json.JSONDecodeError is a ValueError
                    log.warning("%s:%d: skipping a malformed line (%s)", self.path, number, e)

    def rewrite(self, last_iteration: int) -> list[Point]:
        """Keep only the points with iteration <= last_iteration (a resume), atomically; returns them."""
        kept = [p for p in self.read() if p.iteration <= last_iteration]
        with self._lock:
            self._close_locked()
            if not self.path.exists() and not kept:
                return kept
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(p.to_json(), separators=(",", ":")) + "\n" for p in kept),
                           encoding="utf-8")
            os.replace(tmp, self.path)
        return kept

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def csv_lines(points: Iterable[Point]) -> Iterator[str]:
    """The header row, then one CSV row per point (empty cells for None and non-finite values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def row(values) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield row(COLUMNS)
    for point in points:
        yield row("" if v is None else v for v in point.to_json().values())
