"""Figures written to shared memory: prometheus-client's mmap files, one set per writer, in a run directory.

Each value is two doubles (value, timestamp) at a fixed offset of an mmap'd file, so a `set` or
`inc` is a struct write into page cache, with no system call and no lock held across processes.
The monitor process reads the files with the library's own MultiProcessCollector (each rank's
series carry their own `rank` label, so nothing is summed across ranks).

Why not prometheus-client's multiprocess mode itself: PROMETHEUS_MULTIPROC_DIR switches it on for
the whole process when prometheus_client is first imported, and a monitor embedded in somebody's
training script must not flip that process's other metrics into mmap files, nor depend on import
order. So the files are written here directly, in the library's format (`MmapedDict`, `mmap_key`)
and file names (`counter_<id>.db`, `gauge_mostrecent_<id>.db`, ...). Gauges are `mostrecent`: the
newest write wins, which lets the monitor overwrite a dead trainer's `nanogpt_training_state`.
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import time
from pathlib import Path
from typing import Sequence

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

# The file name's first part is the type MultiProcessCollector reports; gauges name their mode.
FILE_KINDS = {"counter": "counter", "gauge": "gauge_mostrecent", "histogram": "histogram", "summary": "summary"}
_TWO_DOUBLES = struct.Struct("dd").pack  # a value's (value, timestamp), as MmapedDict writes them


class SharedFiles:
    """The mmap files of one writer (`ident`: "rank0", "monitor") in `directory`, opened on first use.

    Thread-safe: MmapedDict is not, so creating a value and every write take one lock (uncontended
    in a training loop: ~50 ns)."""

    def __init__(self, directory: str | os.PathLike, ident: str):
        self.directory, self.ident = Path(directory), str(ident)
        self._files: dict[str, MmapedDict] = {}
        self.lock = threading.Lock()

    def paths(self) -> list[Path]:
        return [self.directory / f"{prefix}_{self.ident}.db" for prefix in FILE_KINDS.values()]

    def remove(self) -> None:
        """Delete this writer's files (a new process starts its counters from zero, as Prometheus expects)."""
        self.close()
        for path in self.paths():
            path.unlink(missing_ok=True)

    def file(self, kind: str) -> MmapedDict:
        """The file for a metric kind (lock held by the caller)."""
        mmaped = self._files.get(kind)
        if mmaped is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            mmaped = self._files[kind] = MmapedDict(str(self.directory / f"{FILE_KINDS[kind]}_{self.ident}.db"))
        return mmaped

    def value(self, kind: str, metric: str, sample: str, labelnames: Sequence[str], labelvalues: Sequence[str],
              help_text: str, initial: float = 0.0) -> "SharedValue":
        """A value of one sample (created now, so it is in the first scrape)."""
        key = mmap_key(metric, sample, list(labelnames), list(labelvalues), help_text)
        with self.lock:
            return SharedValue(self, self.file(kind), key, initial, stamped=kind == "gauge")

    def close(self) -> None:
        with self.lock:
            for mmaped in self._files.values():
                mmaped.close()
            self._files.clear()


class SharedValue:
    """One sample's double. `get` reads this process's copy: only this writer writes the key.

    A write is MmapedDict.write_value's, less its lookups: the 16 bytes at the key's fixed offset in
    one slice assignment (never struct.pack_into, which a reader can catch half done). Only gauges
    carry a timestamp ("mostrecent" compares them); the others write 0, as prometheus-client's own
    multiprocess values do."""

    __slots__ = ("_files", "_file", "_key", "_value", "_pos", "_stamped")

    def __init__(self, files: SharedFiles, mmaped: MmapedDict, key: str, initial: float, stamped: bool = True):
        self._files, self._file, self._key, self._value = files, mmaped, key, float(initial)
        self._stamped = stamped
        mmaped.write_value(key, self._value, time.time() if stamped else 0.0)
        self._pos = mmaped._positions[key]  # fixed: a growing file is remapped, its entries stay put

    def set(self, value: float) -> None:
        with self._files.lock:
            self._value = value = float(value)
            m = self._file._m  # the current mapping (a grown file has a new one)
            if m is not None:  # closed: the process is leaving, nothing reads it any more
                m[self._pos:self._pos + 16] = _TWO_DOUBLES(value, time.time() if self._stamped else 0.0)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.set(self._value + amount)

    def get(self) -> float:
        return self._value


class SharedHistogram:
    """One histogram child: a non-cumulative count per bucket and a sum (MultiProcessCollector adds
    the buckets up and derives _count, as it does for multiprocess mode's own files)."""

    def __init__(self, files: SharedFiles, metric: str, help_text: str, labelnames: Sequence[str],
                 labelvalues: Sequence[str], buckets: Sequence[float]):
        self._bounds = list(buckets)
        names, values = (*labelnames, "le"), tuple(labelvalues)
        self._buckets = [files.value("histogram", metric, metric + "_bucket", names, (*values, floatToGoString(b)),
                                     help_text) for b in self._bounds]
        self._sum = files.value("histogram", metric, metric + "_sum", labelnames, values, help_text)

    def observe(self, amount: float) -> None:
        self._sum.inc(amount) if amount >= 0 else self._sum.set(self._sum.get() + amount)
        self._buckets[bisect.bisect_left(self._bounds, amount)].inc()


class SharedSummary:
    """One summary child without quantiles (as prometheus-client's): _sum and _count."""

    def __init__(self, files: SharedFiles, metric: str, help_text: str, labelnames: Sequence[str],
                 labelvalues: Sequence[str]):
        self._count = files.value("summary", metric, metric + "_count", labelnames, labelvalues, help_text)
        self._sum = files.value("summary", metric, metric + "_sum", labelnames, labelvalues, help_text)

    def observe(self, amount: float) -> None:
        self._count.inc()
        self._sum.set(self._sum.get() + amount)
