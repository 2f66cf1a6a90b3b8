"""The bodies the HTTP routes send, each made once per change of what it shows, not once per request.

`Views` keeps the last /metrics exposition (per format and gzip), /api/status and
/api/model JSON, the page and the newest batch of stream events, as bytes. A body
is made again when the monitor's change counter (`TrainingMonitor.generation`:
a logged point, an evaluation, a checkpoint, a state change) has moved since it
was made, or when it is older than `max_age` seconds, because some of what it
shows changes without an event: the per-step counters between log points
(nanogpt_iteration, nanogpt_tokens_total, step times), the clock (elapsed time,
ETA) and what collectors read at scrape time (process CPU and memory). A served
body is therefore never staler than one logged point or `max_age`, whichever
comes first. Concurrent requests for a stale body wait for one thread to make it.

Deliberately not here: HTTP (exporter.routes, exporter.stream), computing the
figures (exporter.monitor, exporter.status), the page's HTML (exporter.page),
the text of the exposition (prometheus-client's encoders make it).
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import time
from typing import Any, Callable, Iterable, Optional

from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import page

MAX_AGE_SECONDS = 1.0  # how old a served body may be when no event changed it (per-step counters, clock)


def json_bytes(value: Any) -> bytes:
    """Strict JSON (non-finite floats as null, which JSON.parse accepts; NaN would not be)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, separators=(",", ":")).encode()


class _Cached:
    """One body and the generation and time it was made at; `get` remakes it when stale, one thread at a time."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.made = 0  # how many times it was made (tests and benches read it)
        self._entry: Optional[tuple[int, float, Any]] = None  # (generation, monotonic time, value)
        self._lock = threading.Lock()

    def get(self, generation: int, max_age: float) -> Any:
        entry = self._entry
        if entry is not None and entry[0] == generation and time.monotonic() - entry[1] < max_age:
            return entry[2]
        with self._lock:  # the others wait for this one thread's body instead of each making their own
            entry = self._entry
            if entry is None or entry[0] != generation or time.monotonic() - entry[1] >= max_age:
                made_at = time.monotonic()  # before making: a body takes the age of its oldest figure
                entry = self._entry = (generation, made_at, self.make())
                self.made += 1
            return entry[2]


class Views:
    """The bodies of one exporter.monitor.TrainingMonitor's routes, made once per change."""

    def __init__(self, monitor: Any, max_age: float = MAX_AGE_SECONDS):
        self.monitor, self.max_age = monitor, max_age
        self._metrics: dict[tuple[str, bool], _Cached] = {}
        self._metrics_lock = threading.Lock()
        self.status_view = _Cached(self._make_status)
        self.model_view = _Cached(lambda: json_bytes(monitor.model()))
        self.page_view = _Cached(lambda: page.render(monitor))
        self._events: Optional[tuple[tuple[int, int], bytes, int]] = None  # ((cursor, generation), body, last)

    def metrics(self, accept: Optional[str], accept_encoding: Optional[str],
                names: Optional[Iterable[str]] = None) -> tuple[bytes, str, dict[str, str]]:
        """(body, content type, headers) of /metrics as prometheus-client negotiates it (OpenMetrics
        when asked, gzip when accepted); a `name[]` selection is made fresh each time."""
        encoder, content_type = choose_encoder(accept)
        zipped = gzip_accepted(accept_encoding)
        headers = {"Content-Encoding": "gzip"} if zipped else {}
        if names is not None:
            return self._exposition(encoder, zipped, names), content_type, headers
        key = (content_type, zipped)
        with self._metrics_lock:
            view = self._metrics.get(key)
            if view is None:
                view = self._metrics[key] = _Cached(lambda: self._exposition(encoder, zipped))
        return view.get(self.monitor.generation, self.max_age), content_type, headers

    def _exposition(self, encoder: Callable, zipped: bool, names: Optional[Iterable[str]] = None) -> bytes:
        started = time.perf_counter()
        registry = self.monitor.registry
        body = encoder(registry if names is None else registry.restricted_registry(names))
        if zipped:
            body = gzip.compress(body)
        self.monitor.metrics.scrape_duration.set(time.perf_counter() - started)
        return body

    def metrics_made(self) -> int:
        """How many /metrics bodies were made so far (all formats)."""
        return sum(view.made for view in list(self._metrics.values()))

    def status(self) -> bytes:
        """The /api/status body."""
        return self.status_view.get(self.monitor.generation, self.max_age)

    def _make_status(self) -> bytes:
        status = self.monitor.status()
        if status is None:  # status() is guarded: it counted and logged its error
            raise RuntimeError("status snapshot failed")
        return json_bytes(status)

    def model(self) -> bytes:
        """The /api/model body."""
        return self.model_view.get(self.monitor.generation, self.max_age)

    def page(self) -> tuple[bytes, dict[str, str]]:
        """The live page's HTML with the current figures, and its headers."""
        return self.page_view.get(self.monitor.generation, self.max_age)

    def events_after(self, cursor: int) -> tuple[bytes, int]:
        """The stream's `point` events for the points after iteration `cursor` (empty when none)
        and the iteration of the last one. Open streams are usually all at the newest point, so
        the events of one (cursor, generation) are made once and shared."""
        key = (cursor, self.monitor.generation)  # read before the history: a point after it makes a new key
        cached = self._events
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        points = self.monitor.history.since(cursor)
        body = "".join(f"id: {p.iteration}\nevent: point\ndata: {p.json}\n\n" for p in points).encode()
        last = points[-1].iteration if points else cursor
        self._events = (key, body, last)  # one tuple store: other threads see all of it or none
        return body, last
