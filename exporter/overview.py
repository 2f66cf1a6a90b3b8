"""Which points an overview of the history keeps (about two per pixel column; spikes, evaluations and
NaN gaps kept), and `Levels`, which keeps that choice up to date as points arrive.

numpy is imported only when an overview is made: recording does not need it.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from itertools import chain
from math import isfinite, nan
from operator import attrgetter
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .point import COLUMNS, Point, ThinnedColumns

if TYPE_CHECKING:
    import numpy as np



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


# --- the levels: the overview kept up to date --------------------------------------------------

LO, HI, VLO, VHI, NAN = range(5)  # a bucket's slots: the points it keeps (a row id, -1 for none); HI follows LO
SLOTS = 5
FINEST_BUCKETS = 4_096  # buckets of the finest level at most: serves overviews up to 4,096 points
MIN_BUCKETS = 64  # an overview reads a level with at least this many whole buckets in its range
START_SHIFT_MAX = 8  # the finest buckets start at most 2**8 iterations wide
_LOSS, _VAL = COLUMNS.index("loss"), COLUMNS.index("val_loss")
_STILL = {LO: ("loss", True), HI: ("loss", False), VLO: ("val_loss", True), VHI: ("val_loss", False)}

Held = Callable[[int], Sequence[Point]]  # the history's held points from an iteration on, oldest first


@dataclass
class Picked:
    """What an overview reads of the levels, copied under the history's lock."""

    ids: array  # row ids of the kept points (repeats and -1 included)
    rows: dict[str, array]  # a copy of the row store's fields that were asked for
    points: list[Point]  # kept points of the newest bucket, not rows yet
    edges: list[tuple[int, int]]  # spans at the ends of the range no whole bucket covers: read from the held points


def _finite(value) -> bool:
    return value is not None and isfinite(value)


def _fold(slots: list, point: Point) -> None:
    """Take `point`, the newest, into the slots of the open bucket (Points; a tie keeps the earlier)."""
    loss, val = point.loss, point.val_loss
    if loss is not None and isfinite(loss):  # _finite, inline: this runs for every point logged
        if slots[LO] is None or loss < slots[LO].loss:
            slots[LO] = point
        if slots[HI] is None or loss > slots[HI].loss:
            slots[HI] = point
    elif slots[NAN] is None:
        slots[NAN] = point
    if val is not None and isfinite(val):
        if slots[VLO] is None or val < slots[VLO].val_loss:
            slots[VLO] = point
        if slots[VHI] is None or val > slots[VHI].val_loss:
            slots[VHI] = point


def _still(slot: int, new: Point, old: Point) -> bool:
    """Whether `new`, which replaced `old`, still earns the slot `old` held."""
    if slot == NAN:
        return not _finite(new.loss)
    name, lowest = _STILL[slot]
    value, before = getattr(new, name), getattr(old, name)
    return _finite(value) and (value <= before if lowest else value >= before)


class Levels:
    """Per-bucket extremes of every point appended, at bucket widths 2**(shift + level) iterations,
    so an overview of N points costs the same at a million logged points as at a thousand.
    Not thread-safe: History calls it under its lock.

    Each bucket keeps the points overview_indices would keep of it (the lowest and the highest
    finite loss and val_loss, the first non-finite loss; a tie keeps the earlier point). An
    overview of N points reads the coarsest level with at least N/2 whole buckets in its range and
    lets overview_indices pick from those: the extremes of a pixel column are among those of the
    buckets in it. Every logged point counts, also those the history has thinned away, so a spike
    stays in the overview however long the run.

    Cost: a point is folded into the open bucket (a few comparisons); a closed bucket's kept points
    become rows of bare numbers (ThinnedColumns, 96 bytes a row) and join the levels above lazily
    (each level holds all of the one below but that one's newest bucket). The finest level holds at
    most FINEST_BUCKETS buckets; past that it goes and the next is the finest, so the whole is a few
    thousand rows (under 1 MB) at any length. The rows only it kept are compacted away then: 5 to
    10 ms on the training thread, each time the finest width doubles (6 times in a million points
    logged one an iteration). A History.append costs 1 to 3 us more for all this."""

    def __init__(self, finest_buckets: int = FINEST_BUCKETS):
        self.finest_buckets = finest_buckets
        self.clear()

    def clear(self) -> None:
        self.shift = 0  # the finest level's buckets are 2**shift iterations wide
        self.rows = ThinnedColumns()  # the kept points of closed buckets; a row's id is its index
        self.keys: list[array] = []  # per level, finest first: bucket numbers (iteration >> width), increasing
        self.slots: list[array] = []  # per level: SLOTS row ids per bucket
        self.open_key: Optional[int] = None  # the newest bucket, at the finest width; not in any level yet
        self.open: list[Optional[Point]] = [None] * SLOTS
        self.newest: Optional[int] = None  # the newest iteration appended

    def add(self, point: Point) -> None:
        """Take in the newest point (iterations strictly increase). A few microseconds at most."""
        if self.shift == 0 and self.newest is not None and not self.keys:
            # the second point: the finest buckets start about three logging intervals wide (256
            # iterations at most), so a bucket closes every few points, not at each
            self.shift = min((2 * (point.iteration - self.newest)).bit_length(), START_SHIFT_MAX)
            self.open_key = self.newest >> self.shift
        key = point.iteration >> self.shift
        if key != self.open_key:
            if self.open_key is not None:
                self._close()
                key = point.iteration >> self.shift  # the finest width may have doubled
            self.open_key = key
        _fold(self.open, point)
        self.newest = point.iteration

    def amend(self, old: Point, new: Point, held: Held) -> None:
        """The newest point `old` is now `new` (an evaluation merged into it): the open bucket follows.
        Where `new` no longer earns a slot `old` held, the open bucket is taken again from the held
        points (O(its points), rare: an eval adds a val_loss to a point that had none)."""
        lost = False
        for slot, point in enumerate(self.open):
            if point is old:
                self.open[slot] = new
                lost = lost or not _still(slot, new, old)
        if lost:
            self._refold(self.open_key, held)
        else:
            _fold(self.open, new)

    def truncate(self, last: int, newest: Optional[int], held: Held) -> None:
        """Forget the points after iteration `last`, called once the held points are cut the same way
        (`newest`: the newest iteration held now, None if none). The finest bucket of `newest` is
        taken again from the held points (its thinned-away points are lost to it) and is the open one;
        each coarser level again holds all of the one below but that one's newest bucket. The width
        stays as it was: a truncate is rare (a resume, a re-logged iteration)."""
        if self.newest is None or last >= self.newest:
            return
        if newest is None:
            self.clear()
            return
        self.newest = newest
        key = newest >> self.shift
        if self.keys:  # the finest level loses the bucket of `newest` and the ones after it
            self._cut(0, bisect.bisect_left(self.keys[0], key))
        self._refold(key, held)
        for level in range(1, len(self.keys)):
            below, below_slots = self.keys[level - 1], self.slots[level - 1]
            if not below:
                self._cut(level, 0)
                continue
            top = below[-1] >> 1
            self._cut(level, bisect.bisect_left(self.keys[level], top))
            children = range(bisect.bisect_left(below, top << 1), len(below) - 1)  # all but the newest
            if children:
                ids = [-1] * SLOTS
                for child in children:
                    self._merge(ids, 0, below_slots[child * SLOTS:(child + 1) * SLOTS])
                self.keys[level].append(top)
                self.slots[level].extend(ids)
        while self.keys and not self.keys[-1]:
            del self.keys[-1], self.slots[-1]
        self._compact()

    def pick(self, first: Optional[int], last: Optional[int], buckets: int, names: Sequence[str]) -> Optional[Picked]:
        """The kept points of iterations first..last (None: open-ended) from the coarsest level with at
        least `buckets` (and MIN_BUCKETS) whole buckets there, None when no level has that many; the
        ends of the range that level does not cover whole are read from the finer levels (a bucket
        each at most), and what no finest bucket covers whole from the held points (Picked.edges)."""
        need = max(buckets, MIN_BUCKETS)
        for level in reversed(range(len(self.keys))):
            start, end = self._whole(level, first, last)
            keys, width = self.keys[level], self.shift + level
            lo = 0 if start is None else bisect.bisect_left(keys, start >> width)
            if (len(keys) if end is None else bisect.bisect_right(keys, end >> width)) - lo >= need:
                break
        else:
            return None
        picked = Picked(array("i"), dict(zip(names, self.rows.copy(0, len(self.rows), names))), [], [])
        self._collect(level, start, end, picked)
        ends = ([(first, start - 1)] if start is not None and first < start else []) + \
               ([(end + 1, last)] if end is not None and end < last else [])
        for level in reversed(range(level)):  # each end narrows to less than one bucket of the level below
            narrower = []
            for a, b in ends:
                start, end = self._whole(level, a, b)
                if start <= end:
                    self._collect(level, start, end, picked)
                    narrower += [(a, start - 1)] if a < start else [(end + 1, b)] if end < b else []
                else:
                    narrower.append((a, b))
            ends = narrower
        picked.edges = ends
        return picked

    def _whole(self, level: int, first: Optional[int], last: Optional[int]) -> tuple[Optional[int], Optional[int]]:
        """The span start..end of the whole buckets of `level` in first..last (None: open-ended)."""
        width = self.shift + level
        return (None if first is None else -(-first >> width) << width,
                None if last is None else (((last + 1) >> width) << width) - 1)

    def _collect(self, level: int, start: Optional[int], end: Optional[int], picked: Picked) -> None:
        """Add to `picked` the kept points of the buckets of `level` in start..end (whole buckets), with
        the newest buckets of the levels below and the open one there, which `level` does not hold yet."""
        def inside(key: int, width: int) -> bool:
            return (start is None or key << width >= start) and (end is None or ((key + 1) << width) - 1 <= end)

        keys, width = self.keys[level], self.shift + level
        lo = 0 if start is None else bisect.bisect_left(keys, start >> width)
        hi = len(keys) if end is None else bisect.bisect_right(keys, end >> width)
        picked.ids.extend(self.slots[level][lo * SLOTS:hi * SLOTS])
        for below in range(level):
            keys = self.keys[below]
            if keys and inside(keys[-1], self.shift + below):
                picked.ids.extend(self.slots[below][-SLOTS:])
        if self.open_key is not None and inside(self.open_key, self.shift):
            picked.points += [p for p in self.open if p is not None]

    def _close(self) -> None:
        """The open bucket's kept points become rows, and it joins the finest level."""
        rows, ids, made = self.rows, [-1] * SLOTS, {}
        for slot, point in enumerate(self.open):
            if point is not None:
                row = made.get(id(point))
                if row is None:
                    rows.append(point)
                    row = made[id(point)] = len(rows.columns[0]) - 1
                ids[slot] = row
        self._push(0, self.open_key, ids)
        if len(self.keys[0]) > self.finest_buckets:  # the finest level goes; the next one, twice as wide, takes over
            self._push(1, self.keys[0][-1] >> 1, self.slots[0][-SLOTS:])
            del self.keys[0], self.slots[0]
            self.shift += 1
            self._compact()
        self.open_key, self.open = None, [None] * SLOTS

    def _push(self, level: int, key: int, ids: Sequence[int]) -> None:
        """Bucket `key` of `level` takes in `ids`. A new bucket hands the one before it up a level."""
        while True:
            if level == len(self.keys):
                self.keys.append(array("q"))
                self.slots.append(array("i"))
            keys, slots = self.keys[level], self.slots[level]
            if keys and keys[-1] == key:
                self._merge(slots, len(slots) - SLOTS, ids)
                return
            keys.append(key)
            slots.extend(ids)
            if len(keys) == 1:
                return
            level, key, ids = level + 1, keys[-2] >> 1, slots[-2 * SLOTS:-SLOTS]

    def _merge(self, slots, at: int, ids: Sequence[int]) -> None:
        """The bucket at slots[at:at + SLOTS] takes in a later bucket's kept points `ids`."""
        columns = self.rows.columns
        for low, column in ((LO, columns[_LOSS]), (VLO, columns[_VAL])):  # a low and its high come together
            new = ids[low]
            if new < 0:
                continue
            old = slots[at + low]
            if old < 0:
                slots[at + low], slots[at + low + 1] = new, ids[low + 1]
                continue
            if column[new] < column[old]:
                slots[at + low] = new
            new = ids[low + 1]
            if column[new] > column[slots[at + low + 1]]:
                slots[at + low + 1] = new
        if slots[at + NAN] < 0:
            slots[at + NAN] = ids[NAN]

    def _refold(self, key: Optional[int], held: Held) -> None:
        """The open bucket `key` taken again from the held points in it (all held ones from its start)."""
        self.open_key, self.open = None, [None] * SLOTS
        if key is None:
            return
        for point in held(key << self.shift):
            self.open_key = key
            _fold(self.open, point)

    def _cut(self, level: int, start: int) -> None:
        del self.keys[level][start:], self.slots[level][start * SLOTS:]

    def _compact(self) -> None:
        """Drop the rows no bucket keeps any more: O(rows), a few milliseconds."""
        live = sorted(set(chain.from_iterable(self.slots)) - {-1})
        renumber = [-1] * (len(self.rows) + 1)  # renumber[-1], for no point, is -1 too
        for new, old in enumerate(live):
            renumber[old] = new
        self.rows.keep(live)
        self.slots = [array("i", map(renumber.__getitem__, slots)) for slots in self.slots]


def picked_columns(picked: Picked, held: Sequence[tuple[dict, list[Point]]], buckets: int) -> dict[str, list]:
    """The overview `buckets` wide (overview_indices) of the picked rows and points
    and of `held` ones (the range's first and last, its edges: copied older fields and recent
    points), each field a list of floats in iteration order (NaN where missing)."""
    import numpy as np

    ids = np.asarray(picked.ids, dtype=np.intp)
    ids = ids[ids >= 0]  # repeats go with the other copies of a point, below
    parts = [_fields(picked.points, picked.rows)] + [part for older, recent in held
                                                     for part in (older, _fields(recent, picked.rows))]
    columns = {name: np.concatenate([np.asarray(rows, dtype=np.float64)[ids]]
                                    + [np.asarray(part[name], dtype=np.float64) for part in parts])
               for name, rows in picked.rows.items()}
    _, first = np.unique(columns["iteration"], return_index=True)  # iteration order, each point once
    columns = {name: column[first] for name, column in columns.items()}
    kept = overview_indices(columns["iteration"], columns["loss"], columns["val_loss"], buckets)
    return {name: column[kept].tolist() for name, column in columns.items()}


def _fields(points: Sequence[Point], names) -> dict[str, list[float]]:
    """The fields `names` of these points as floats, NaN for None (as ThinnedColumns holds them)."""
    return {name: [nan if v is None else float(v) for v in map(attrgetter(name), points)] for name in names}
