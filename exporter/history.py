"""The logged history in memory: every point of a short run, a bounded number of a long one.

`History` keeps every logged point of a run in memory while the run is short,
and a bounded number over a million-iteration run: the newest `recent` points
at full resolution with their JSON text cached (exporter.tables.CachedTable,
about 1.5 kB a point), and older points evenly thinned as bare numbers
(exporter.tables.ThinnedColumns, 96 bytes a point): every stride-th point that
ages out is kept; each time the older range fills up, every second point of it
is dropped and the stride doubles, so the whole run stays covered. The default,
3,000 recent and up to 100,000 older points, takes less memory than the 12,000
cached points it replaced (about 15 MB against 16 MB; tests/integration/test_history.py); the
live page reads overviews of it, never all of it.
Its counterpart on disk, complete at full resolution, is exporter.metricslog.
Neither knows about Prometheus or HTTP.

Serving must stay cheap: the recent points' JSON is a join of cached strings;
older points are copied under the lock (memcpy) and formatted outside it, and
an overview formats only the points it keeps. An overview of a long range reads
exporter.levels, kept up to date as points arrive, not the held points: about N
kept points for N asked, whatever the run's length.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Iterator, Optional, Sequence

from .levels import Levels, picked_columns
from .overview import overview_indices
from .point import COLUMNS, CSV_HEADER, NUMBERS, Point, csv_row
from .tables import CachedTable, ThinnedColumns, thinned_json, thinned_points, thinned_texts

RECENT_POINTS = 3_000  # newest points kept at full resolution, their JSON cached
OLDER_POINTS = 100_000  # cap on thinned older points (bare numbers)
FORMATS = ("points", "columns")  # /api/history?format=: an object per point (the default), or an array per field
MAX_OVERVIEW_POINTS = 100_000  # /api/history?points=: more than any screen has pixel columns
MAX_TAIL_OLDER = 3_000  # older points a History.tail (each status) reads at most
CSV_CHUNK = 4_096  # older points formatted at a time for CSV


class History:
    """Thread-safe, bounded, iteration-ordered list of points (appended by the training thread)."""

    def __init__(self, recent: int = RECENT_POINTS, older: int = OLDER_POINTS):
        if recent < 1 or older < 2:
            raise ValueError("history needs recent >= 1 and older >= 2")
        self._recent_cap, self._older_cap = recent, older
        self._older = ThinnedColumns()  # thinned, iteration order, bare numbers
        self._recent = CachedTable()  # full resolution, iteration order, JSON cached
        self._aged, self._stride = 0, 1  # points aged out of recent so far; older keeps every stride-th
        self._levels = Levels()  # the overview's per-bucket extremes of every point appended
        self._lock = threading.Lock()

    def append(self, point: Point) -> None:
        """Add a point. A point at an iteration already held replaces it and everything after
        it (a re-logged or resumed iteration), so iterations stay strictly increasing."""
        point.json  # serialise now, on the caller's thread (~5 us), so serving the history is a join
        with self._lock:
            newest = self._last_locked()
            if newest is not None and point.iteration <= newest.iteration:
                self._truncate_locked(point.iteration - 1)
            self._recent.append(point)
            self._levels.add(point)
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
            self._levels.amend(newest, amended, self._held_from_locked)
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
        newest = self._last_locked()
        self._levels.truncate(last_iteration, None if newest is None else newest.iteration, self._held_from_locked)

    def _held_from_locked(self, iteration: int) -> list[Point]:
        """The points held from `iteration` on, oldest first."""
        older, recent = self._tail_locked(iteration - 1)
        return thinned_points(self._older.copy(older, len(self._older))) + self._recent.points[recent:]

    def _tail_locked(self, iteration: Optional[int]) -> tuple[int, int]:
        """(first older index, first recent index) of the points after `iteration`: O(log n),
        since each open event stream asks for its tail after every logged point."""
        if iteration is None:
            return 0, self._recent.first
        start = self._recent.after(iteration)
        if start > self._recent.first:  # every older point is before the oldest recent one
            return len(self._older), start
        return self._older.after(iteration), start

    def since(self, iteration: Optional[int] = None) -> list[Point]:
        """The points with iteration > `iteration` (all of them for None), oldest first."""
        with self._lock:
            older, recent = self._tail_locked(iteration)
            copied, newer = self._older.copy(older, len(self._older)), self._recent.points[recent:]
        return thinned_points(copied) + newer

    def tail(self, seconds: float) -> list[Point]:
        """The points logged in the `seconds` before the newest one, back to the first at or before
        that time, oldest first: what a status reads (trend windows, rates) in O(window), however
        long the run."""
        with self._lock:
            newest, recent = self._recent.last(), self._recent.points[self._recent.first:]
            if newest is None or newest.timestamp is None:  # no clock to count back from: what is recent
                return recent
            start = newest.timestamp - seconds
            if recent[0].timestamp is not None and recent[0].timestamp <= start:  # the recent points cover it
                keep = len(recent) - 1
                while keep > 0 and not (recent[keep].timestamp is not None and recent[keep].timestamp <= start):
                    keep -= 1
                return recent[keep:]
            first, end = self._older.at_or_before(start), len(self._older)
            # a window over more older points than MAX_TAIL_OLDER (a run logging many points a
            # second) is read evenly thinned once more, as the older points already are
            copied = self._older.copy(first, end, step=-(-(end - first) // MAX_TAIL_OLDER) or 1)
        return thinned_points(copied) + recent

    def to_json(self, run_id: str, rank: int, since: Optional[int] = None, layout: str = "points",
                names: Optional[Sequence[str]] = None, until: Optional[int] = None,
                points: Optional[int] = None) -> bytes:
        """The /api/history body for the points after `since` and up to `until` (inclusive).
        layout "points" (the default): {"run_id", "rank", "points": [{...}, ...]}; layout "columns":
        {"run_id", "rank", "columns": [names], "<name>": [one value per point, null where
        missing], ...} with all fields or only `names`. Both carry the same values; columns are
        under half the bytes and parse several times faster in a browser. With `points`, an
        overview of about that many points (exporter.overview.overview_indices): of every point
        logged in the range, read from exporter.levels, when a level has that many buckets there
        (MIN_BUCKETS at least), else of the held points there (a small range, or an overview
        wider than the finest level, up to ~100k points held); every held point when they are
        at most that many. Without `points`, every held point. ValueError (one line) for a bad
        layout, name or point count."""
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
        wanted = COLUMNS if layout == "points" else tuple(dict.fromkeys(names + (NUMBERS if points else ())))
        buckets, picked = (points or 0) // 2, None
        with self._lock:
            (o0, r0), (o1, r1) = self._tail_locked(since), self._end_locked(until)
            o1, r1 = max(o0, o1), max(r0, r1)
            if points is not None and (o1 - o0) + (r1 - r0) > 2 * buckets:  # else every held point comes
                picked = self._levels.pick(None if since is None else since + 1, until, buckets, wanted)
            if picked is not None:  # the levels' kept points, and the held ones at the range's ends and edges
                spans = [self._tail_locked(a - 1) + self._end_locked(b) for a, b in picked.edges]
                spans += [(o0, r0) + ((o0 + 1, r0) if o0 < o1 else (o0, r0 + 1)),  # the first held point
                          ((o1 - 1, r1) if r0 == r1 else (o1, r1 - 1)) + (o1, r1)]  # and the last
                held = [(dict(zip(wanted, self._older.copy(a, c, wanted))), self._recent.points[b:d])
                        for a, b, c, d in spans]
            else:
                older = dict(zip(wanted, self._older.copy(o0, o1, wanted)))
                recent = self._recent.points[r0:r1]
                if points is not None:
                    numbers = [older[name] + column[r0:r1] for name, column in zip(NUMBERS, self._recent.numbers)]
                elif layout == "columns":
                    cached = [self._recent.text[COLUMNS.index(name)][r0:r1] for name in names]
        if picked is not None:  # formatted as the older points are: bare numbers
            older, recent, cached = picked_columns(picked, held, buckets), [], [[] for _ in names]
        elif points is not None:  # an overview of the held points: only the points it keeps are formatted
            kept = overview_indices(*numbers, buckets=points // 2)
            old = [i for i in kept if i < o1 - o0]
            older = {name: [column[i] for i in old] for name, column in older.items()}
            recent = [recent[i - (o1 - o0)] for i in kept[len(old):]]
            cached = [[p.json_values[k] for p in recent] for k in map(COLUMNS.index, names)]
        head = '{"run_id":%s,"rank":%s,' % (json.dumps(run_id), json.dumps(rank))
        if layout == "points":
            texts = thinned_json(tuple(older[name] for name in COLUMNS)) + [p.json for p in recent]
            return (head + '"points":[' + ",".join(texts) + "]}").encode()
        arrays = "".join(f',"{name}":[' + ",".join(thinned_texts(older[name], name) + texts) + "]"
                         for name, texts in zip(names, cached))
        return (head + '"columns":' + json.dumps(list(names), separators=(",", ":")) + arrays + "}").encode()

    def _end_locked(self, until: Optional[int]) -> tuple[int, int]:
        """(end older index, end recent index) of the points up to `until` (inclusive)."""
        if until is None:
            return len(self._older), len(self._recent.points)
        return self._older.after(until), self._recent.after(until)

    def last(self) -> Optional[Point]:
        with self._lock:
            return self._last_locked()

    def _last_locked(self) -> Optional[Point]:
        """The newest point: the newest recent one, or the newest older one after a truncate."""
        newest = self._recent.last()
        if newest is None and len(self._older):
            newest = thinned_points(self._older.copy(len(self._older) - 1, len(self._older)))[0]
        return newest

    def csv_lines(self) -> Iterator[str]:
        """The header row, then one CSV row per point held, oldest first. Lazy: the points are
        copied at the first row and the older ones formatted a chunk at a time as rows are read,
        so a paced reader (exporter.routes, a turn per 512 rows) paces the work too."""
        yield CSV_HEADER
        with self._lock:
            older, recent = self._older.copy(0, len(self._older)), self._recent.points[self._recent.first:]
        for start in range(0, len(older[0]), CSV_CHUNK):
            texts = [thinned_texts(column[start:start + CSV_CHUNK], name) for column, name in zip(older, COLUMNS)]
            yield from map(csv_row, zip(*texts))
        for point in recent:
            yield csv_row(point.json_values)

    def __len__(self) -> int:
        with self._lock:
            return len(self._older) + len(self._recent)
