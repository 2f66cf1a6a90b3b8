"""One logged iteration (`Point`), its JSON and CSV text, and the two tables the history holds points in.

A point's JSON text, and each field's, is made once (on the training thread, as
the history appends it), so serving the recent points is a join of cached
strings: `CachedTable`, about 1.5 kB a point. Older points are bare C doubles,
one array per field: `ThinnedColumns`, 96 bytes a point, formatted when read.
Both follow Point's fields in order, so a field added to Point changes them too.
Non-finite floats stay floats in memory and are written as JSON null (JSON has
no NaN); readers get None back for them.
"""

from __future__ import annotations

import bisect
import json
import math
from array import array
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from operator import attrgetter
from typing import Iterable, Iterator, Optional


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


def _json_number(value) -> str:
    """JSON text of a field value: float repr is the shortest round-trip form, as json.dumps writes it."""
    if value is None:
        return "null"
    if value.__class__ is float:
        return repr(value) if math.isfinite(value) else "null"
    return json.dumps(value)


CSV_HEADER = ",".join(COLUMNS) + "\n"  # plain identifiers: nothing to quote


def csv_row(texts: Iterable[str]) -> str:
    """One CSV row from a point's fields' JSON text: numbers need no quoting; null is an empty cell."""
    return ",".join("" if v == "null" else v for v in texts) + "\n"


def csv_lines(points: Iterable[Point]) -> Iterator[str]:
    """The header row, then one CSV row per point (empty cells for None and non-finite values)."""
    yield CSV_HEADER
    for point in points:
        yield csv_row(point.json_values)


# --- the tables the history holds points in ----------------------------------------------------

_ITERATION = attrgetter("iteration")
_FIELDS = attrgetter(*COLUMNS)  # a point's fields, in COLUMNS order, as a tuple


def _numbers(point: Point) -> tuple[float, ...]:
    """The NUMBERS of a point as floats, NaN for None."""
    return tuple(math.nan if v is None else float(v) for v in (point.iteration, point.loss, point.val_loss))


class CachedTable:
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


class ThinnedColumns:
    """Points as one array of C doubles per field, in iteration order (NaN where a value is missing:
    read back as None, but for the loss, which stays a float). Append, thin, cut and search only;
    readers take a `copy` under the history's lock and make Points or JSON text from it outside."""

    def __init__(self):
        self.columns: tuple[array, ...] = tuple(array("d") for _ in COLUMNS)

    def __len__(self) -> int:
        return len(self.columns[0])

    def append(self, point: Point) -> None:
        for column, value in zip(self.columns, _FIELDS(point)):
            column.append(math.nan if value is None else value)

    def thin(self) -> None:
        """Keep every second point, the first included."""
        self.columns = tuple(column[::2] for column in self.columns)

    def cut(self, start: int) -> None:
        """Drop the points from index `start` on."""
        for column in self.columns:
            del column[start:]

    def keep(self, indices) -> None:
        """Keep only the points at these indices (increasing)."""
        self.columns = tuple(array("d", [column[i] for i in indices]) for column in self.columns)

    def after(self, iteration: int) -> int:
        """Index of the first point with an iteration > `iteration` (len when none)."""
        return bisect.bisect_right(self.columns[0], iteration)

    def at_or_before(self, timestamp: float) -> int:
        """Index of the newest point logged at or before unix time `timestamp` (0 when none is):
        one pass in numpy over a copy of the timestamps, 100k in about a tenth of a millisecond."""
        import numpy as np

        hits = np.flatnonzero(np.array(self.columns[COLUMNS.index("timestamp")]) <= timestamp)
        return int(hits[-1]) if len(hits) else 0

    def copy(self, start: int, end: int, names=COLUMNS, step: int = 1) -> tuple[array, ...]:
        """The fields `names` of every `step`-th point of start..end-1, copied: safe to read outside
        the lock."""
        return tuple(self.columns[COLUMNS.index(name)][start:end:step] for name in names)


def thinned_points(columns: tuple[array, ...]) -> list[Point]:
    """The Points of a ThinnedColumns.copy() of all fields."""
    return [Point(int(values[0]), values[1], *(None if v != v else v for v in values[2:]))
            for values in zip(*columns)]


def thinned_texts(column: array, name: str) -> list[str]:
    """The JSON text of each value of one copied field (null where missing or not finite), as
    Point.json_values writes it."""
    if name == "iteration":
        return [str(int(v)) for v in column]
    return [repr(v) if math.isfinite(v) else "null" for v in column]


def thinned_json(columns: tuple[array, ...]) -> list[str]:
    """The JSON text of each point of a copy of all fields, as Point.json writes it (no Point made)."""
    texts = [thinned_texts(column, name) for column, name in zip(columns, COLUMNS)]
    return [_POINT_TEMPLATE % values for values in zip(*texts)]
