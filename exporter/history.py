"""The logged history in memory: every point of a short run, a bounded number of a long one.

`History` keeps every logged point of a run in memory while the run is short,
and a bounded number over a million-iteration run: the newest `recent` points
at full resolution, and older points evenly thinned (every stride-th point that
ages out is kept; each time the older range fills up, every second point of it
is dropped and the stride doubles), so the whole run stays covered.
Its counterpart on disk, complete at full resolution, is exporter.metricslog.
Neither knows about Prometheus or HTTP.

Non-finite floats are kept as floats in memory and written as JSON null (JSON
has no NaN); readers get None back for them.

Serving a long history must stay cheap (100k points in tens of milliseconds):
each point's JSON text, and each field's, is made once when it is appended, so
`History.to_json` (the /api/history body, an object per point or an array per
field) is a join of cached strings, never a walk over values.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from operator import attrgetter
from array import array
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

if TYPE_CHECKING:
    import numpy as np  # imported where an overview is made: the exporter alone does not need it

RECENT_POINTS = 10_000  # newest points kept at full resolution
OLDER_POINTS = 2_000  # cap on thinned older points: memory stays <= RECENT + OLDER points
FORMATS = ("points", "columns")  # /api/history?format=: an object per point (the default), or an array per field
MAX_OVERVIEW_POINTS = 100_000  # /api/history?points=: more than any screen has pixel columns


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

    @cached_property
    def json_values(self) -> tuple[str, ...]:
        """Each field's JSON text, in COLUMNS order (float repr is the shortest round-trip form,
        the text json.dumps writes; non-finite floats are null). Made once per point."""
        return tuple(_json_number(getattr(self, name)) for name in COLUMNS)

    @cached_property
    def json(self) -> str:
        """The compact JSON text of `to_json()`, made once per point (~5 us against ~50 us for a dict walk)."""
        return _POINT_TEMPLATE % self.json_values

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
NUMBERS = ("iteration", "loss", "val_loss")  # the fields an overview reads, kept as C doubles too
_POINT_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in COLUMNS) + "}"
_ITERATION = attrgetter("iteration")


def _numbers(point: Point) -> tuple[float, ...]:
    """The NUMBERS of a point as floats, NaN for None."""
    return tuple(math.nan if v is None else float(v) for v in (point.iteration, point.loss, point.val_loss))


def _json_number(value) -> str:
    """JSON text of a field value: float repr is the shortest round-trip form, as json.dumps writes it."""
    if value is None:
        return "null"
    if value.__class__ is float:
        return repr(value) if math.isfinite(value) else "null"
    return json.dumps(value)


class _Table:
    """Points in iteration order and, beside them, each field's JSON text as a column (list of str),
    so a columnar answer is one C-level join per field instead of a float repr per value.
    Indices are into the lists; entries before `first` are dropped ones not yet compacted away
    (dropping the oldest point of 13 lists of 10k is a 13-fold memmove per logged point otherwise)."""

    COMPACT_EVERY = 256  # dropped entries held at most; each compaction moves the lists once

    def __init__(self):
        self.points: list[Point] = []
        self.text: tuple[list[str], ...] = tuple([] for _ in COLUMNS)
        # iteration, loss and val_loss as C doubles (NaN for None), for overviews computed with numpy
        self.numbers: tuple[array, ...] = tuple(array("d") for _ in NUMBERS)
        self.first = 0

    def __len__(self) -> int:
        return len(self.points) - self.first

    def last(self) -> Optional[Point]:
        return self.points[-1] if len(self) else None

    def append(self, point: Point) -> None:
        self.points.append(point)
        for column, value in zip(self.text, point.json_values):
            column.append(value)
        for column, value in zip(self.numbers, _numbers(point)):
            column.append(value)

    def pop_first(self) -> Point:
        point = self.points[self.first]
        self.first += 1
        if self.first >= self.COMPACT_EVERY:
            self._compact()
        return point

    def _compact(self) -> None:
        for column in (self.points, *self.text, *self.numbers):
            del column[:self.first]
        self.first = 0

    def thin(self) -> None:
        """Keep every second point, the first included."""
        self.points = self.points[self.first::2]
        self.text = tuple(column[self.first::2] for column in self.text)
        self.numbers = tuple(column[self.first::2] for column in self.numbers)
        self.first = 0

    def replace_last(self, point: Point) -> None:
        self.points[-1] = point
        for column, value in zip(self.text, point.json_values):
            column[-1] = value
        for column, value in zip(self.numbers, _numbers(point)):
            column[-1] = value

    def cut(self, start: int) -> None:
        """Drop the points from index `start` (>= first) on."""
        for column in (self.points, *self.text, *self.numbers):
            del column[start:]

    def after(self, iteration: int) -> int:
        """Index of the first point with an iteration > `iteration` (len(points) when none)."""
        return bisect.bisect_right(self.points, iteration, lo=self.first, key=_ITERATION)


class History:
    """Thread-safe, bounded, iteration-ordered list of points (appended by the training thread)."""

    def __init__(self, recent: int = RECENT_POINTS, older: int = OLDER_POINTS):
        if recent < 1 or older < 2:
            raise ValueError("history needs recent >= 1 and older >= 2")
        self._recent_cap, self._older_cap = recent, older
        self._older = _Table()  # thinned, iteration order
        self._recent = _Table()  # full resolution, iteration order
        self._aged, self._stride = 0, 1  # points aged out of recent so far; older keeps every stride-th
        self._lock = threading.Lock()

    def append(self, point: Point) -> None:
        """Add a point. A point at an iteration already held replaces it and everything after
        it (a re-logged or resumed iteration), so iterations stay strictly increasing."""
        point.json  # serialise now, on the caller's thread (~5 us), so serving the history is a join
        with self._lock:
            newest = self._recent.last()
            if newest is not None and point.iteration <= newest.iteration:
                self._truncate_locked(point.iteration - 1)
            self._recent.append(point)
            if len(self._recent) > self._recent_cap:
                aged = self._recent.pop_first()
                if self._aged % self._stride == 0:  # every stride-th aged point: the older range stays even
                    self._older.append(aged)
                    if len(self._older) > self._older_cap:
                        self._older.thin()  # keeps the multiples of twice the stride
                        self._stride *= 2
                self._aged += 1

    def amend_last(self, iteration: int, **values) -> Optional[Point]:
        """Set fields of the newest point if it is at `iteration`; returns the new point or None."""
        with self._lock:
            newest = self._recent.last()
            if newest is None or newest.iteration != iteration:
                return None
            amended = replace(newest, **values)
            self._recent.replace_last(amended)
        amended.json  # serialised once, as in append
        return amended

    def truncate(self, last_iteration: int) -> None:
        """Drop the points with iteration > last_iteration."""
        with self._lock:
            self._truncate_locked(last_iteration)

    def _truncate_locked(self, last_iteration: int) -> None:
        for table in (self._recent, self._older):
            table.cut(table.after(last_iteration))
        if not len(self._older):
            self._aged, self._stride = 0, 1

    def _tail_locked(self, iteration: Optional[int]) -> tuple[int, int]:
        """(first older index, first recent index) of the points after `iteration`: O(log n),
        since each open event stream asks for its tail after every logged point."""
        if iteration is None:
            return self._older.first, self._recent.first
        start = self._recent.after(iteration)
        if start > self._recent.first:  # every older point is before the oldest recent one
            return len(self._older.points), start
        return self._older.after(iteration), start

    def since(self, iteration: Optional[int] = None) -> list[Point]:
        """The points with iteration > `iteration` (all of them for None), oldest first."""
        with self._lock:
            older, recent = self._tail_locked(iteration)
            return self._older.points[older:] + self._recent.points[recent:]

    def to_json(self, run_id: str, rank: int, since: Optional[int] = None, layout: str = "points",
                names: Optional[Sequence[str]] = None, until: Optional[int] = None,
                points: Optional[int] = None) -> bytes:
        """The /api/history body for the points after `since` and up to `until` (inclusive).
        layout "points" (the default): {"run_id", "rank", "points": [{...}, ...]}; layout "columns":
        {"run_id", "rank", "columns": [names], "<name>": [one value per point, null where
        missing], ...} with all fields or only `names`. Both carry the same values; columns are
        under half the bytes and parse several times faster in a browser. With `points`, an
        overview of about that many points (see overview_indices); without, every point.
        ValueError (one line) for a bad layout, name or point count."""
        if layout not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {layout!r}")
        if names is not None and layout != "columns":
            raise ValueError("fields needs format=columns")
        names = COLUMNS if names is None else tuple(names)
        unknown = [name for name in names if name not in COLUMNS]
        if unknown or not names:
            raise ValueError(f"fields must name some of {', '.join(COLUMNS)}, got {','.join(unknown)!r}")
        if points is not None and not 2 <= points <= MAX_OVERVIEW_POINTS:
            raise ValueError(f"points must be 2 to {MAX_OVERVIEW_POINTS}, got {points}")
        # copy under the lock (pointer and memcpy copies), the rest outside it: an answer never blocks append
        with self._lock:
            (o0, r0), (o1, r1) = self._tail_locked(since), self._end_locked(until)
            o1, r1 = max(o0, o1), max(r0, r1)
            if points is not None or layout == "points":
                chosen = self._older.points[o0:o1] + self._recent.points[r0:r1]
            if points is not None:
                numbers = [a[o0:o1] + b[r0:r1] for a, b in zip(self._older.numbers, self._recent.numbers)]
            elif layout == "columns":
                columns = [self._older.text[COLUMNS.index(n)][o0:o1] + self._recent.text[COLUMNS.index(n)][r0:r1]
                           for n in names]
        if points is not None:
            chosen = [chosen[i] for i in overview_indices(*numbers, buckets=points // 2)]
            if layout == "columns":
                values = [p.json_values for p in chosen]
                columns = [[v[k] for v in values] for k in map(COLUMNS.index, names)]
        head = '{"run_id":%s,"rank":%s,' % (json.dumps(run_id), json.dumps(rank))
        if layout == "points":
            return (head + '"points":[' + ",".join([p.json for p in chosen]) + "]}").encode()
        arrays = "".join(f',"{name}":[' + ",".join(column) + "]" for name, column in zip(names, columns))
        return (head + '"columns":' + json.dumps(list(names), separators=(",", ":")) + arrays + "}").encode()

    def _end_locked(self, until: Optional[int]) -> tuple[int, int]:
        """(end older index, end recent index) of the points up to `until` (inclusive)."""
        if until is None:
            return len(self._older.points), len(self._recent.points)
        return self._older.after(until), self._recent.after(until)

    def last(self) -> Optional[Point]:
        with self._lock:
            return self._recent.last()

    def __len__(self) -> int:
        with self._lock:
            return len(self._older) + len(self._recent)


def overview_indices(iterations: Sequence[float], loss: Sequence[float], val_loss: Sequence[float],
                     buckets: int) -> list[int]:
    """Which of these points (iteration order) an overview `buckets` wide keeps: all of them when
    there are at most two per bucket; else the first and the last, and in each bucket (an equal
    span of iterations, like a pixel column) the points with the lowest and the highest loss and
    val_loss and the first non-finite loss, so spikes, evaluations and NaN gaps stay visible.
    O(n) in numpy: 100k points in a few milliseconds."""
    import numpy as np

    n = len(iterations)
    if n <= 2 * buckets:
        return list(range(n))
    iterations, loss, val_loss = (np.asarray(column, dtype=np.float64) for column in (iterations, loss, val_loss))
    span = iterations[-1] - iterations[0] + 1
    bucket = ((iterations - iterations[0]) * buckets // span).astype(np.int64)  # nondecreasing
    keep = [np.array([0, n - 1])]
    for values in (loss, val_loss):
        at = np.flatnonzero(np.isfinite(values))  # val_loss: only the evaluations
        if len(at):
            keep += _extremes(at, values[at], bucket[at])
    nonfinite = np.flatnonzero(~np.isfinite(loss))
    keep.append(nonfinite[_run_starts(bucket[nonfinite])])
    return np.unique(np.concatenate(keep)).tolist()


def _run_starts(bucket: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a nondecreasing array starts."""
    import numpy as np

    return np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else bucket


def _extremes(at: np.ndarray, values: np.ndarray, bucket: np.ndarray) -> list[np.ndarray]:
    """The indices (taken from `at`) of the first lowest and the first highest value of each bucket."""
    import numpy as np

    starts = _run_starts(bucket)
    counts = np.diff(np.r_[starts, len(values)])
    found = []
    for reduce in (np.minimum, np.maximum):
        hits = np.flatnonzero(values == np.repeat(reduce.reduceat(values, starts), counts))
        found.append(at[hits[_run_starts(bucket[hits])]])
    return found


def csv_lines(points: Iterable[Point]) -> Iterator[str]:
    """The header row, then one CSV row per point (empty cells for None and non-finite values)."""
    yield ",".join(COLUMNS) + "\n"  # plain identifiers: nothing to quote
    for point in points:  # numbers need no CSV quoting: each field's cached JSON text, null as empty
        yield ",".join("" if v == "null" else v for v in point.json_values) + "\n"
