"""The two stores of exporter.history: the recent points with their cached JSON, and the older,
thinned points as bare numbers.

`CachedTable` holds Point objects and, beside them, each field's JSON text as a
column, so serving them is a join of cached strings (about 1.5 kB a point).
`ThinnedColumns` holds one array of C doubles per field (96 bytes a point), so
the older part of a long run can keep ten times the points in less memory; its
text is made when asked for, from a copy taken under the history's lock.

Deliberately not here: which points age out or are thinned (exporter.history).
"""

from __future__ import annotations

import bisect
import math
from math import isfinite
from array import array
from operator import attrgetter
from typing import Optional

from .point import _POINT_TEMPLATE, COLUMNS, NUMBERS, Point

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
    return [repr(v) if isfinite(v) else "null" for v in column]


def thinned_json(columns: tuple[array, ...]) -> list[str]:
    """The JSON text of each point of a copy of all fields, as Point.json writes it (no Point made)."""
    texts = [thinned_texts(column, name) for column, name in zip(columns, COLUMNS)]
    return [_POINT_TEMPLATE % values for values in zip(*texts)]
