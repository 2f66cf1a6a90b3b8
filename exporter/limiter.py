"""A duty-cycle limit on the CPU the HTTP server may take from the training process.

Every piece of request work (a body, a CSV chunk, an SSE batch) takes a turn:
turns run one at a time, first come first served, and after t seconds of
server CPU the next turn may start only t * (1/ratio - 1) seconds later (an
idle server first grants a burst of BURST_SECONDS of CPU unpaced). So
however many clients arrive, the server's CPU stays at most `ratio` of one
core: clients wait longer instead of training slowing. Waiting is a Condition
wait or a sleep (the GIL is free for the trainer meanwhile).

What a turn charges is all the CPU its thread used since the thread's last
charge (or its `mark()`, where a request starts): with bodies made once per
change (exporter.views), a request's cost is mostly reading its head and
writing its answer, and those count too. Socket writes happen outside a turn
(a slow client must not hold everyone's turn for its socket timeout); their
CPU is charged by the thread's next turn or its final `charge_thread()`.
Pacing applies while `paced()` says so (the server: while the run trains).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

# the server's paced work may take at most 3 % of one core: what it does outside turns (accepting,
# idle streams' keepalives) adds about 1 %, so under a storm of clients training keeps >= 95 % of its
# tokens per CPU-second (bench/load.py; at 5 % it kept 0.936); a lone scrape or page load fits the burst
DEFAULT_MAX_BUSY_RATIO = 0.03
# CPU seconds an idle server may spend before pacing starts: a page load (its HTML, the history's
# overview, status, model) or a scrape goes through at once; a sustained storm is paced as before
BURST_SECONDS = 0.05


class DutyLimiter:
    """First-come-first-served turns with a cool-down proportional to each turn's CPU time."""

    def __init__(self, max_busy_ratio: float = DEFAULT_MAX_BUSY_RATIO, stop: threading.Event | None = None,
                 paced: Callable[[], bool] = lambda: True):
        """`paced`: whether pacing is on now (the server: while the run trains; with no training to
        protect, an export or a storm may take what it needs)."""
        if not 0.0 < max_busy_ratio <= 1.0:
            raise ValueError(f"max_busy_ratio must be in (0, 1], got {max_busy_ratio!r}")
        self.max_busy_ratio = max_busy_ratio
        self.stop = stop or threading.Event()  # once set (the server closing), nobody waits any more
        self.paced = paced
        self._cooldown_per_busy = 1.0 / max_busy_ratio - 1.0  # seconds idle per second of work
        self._lock = threading.Lock()
        self._next_ticket = 0  # FIFO tickets: a plain Lock is not fair and could starve one client
        self._serving = 0
        # ticket -> the Event its thread sleeps on: a turn's end wakes the next ticket only (waking
        # all of a thousand waiters for each turn cost more CPU than the turns themselves)
        self._waiting: dict[int, threading.Event] = {}
        self._next_start = 0.0  # monotonic seconds before which no turn starts
        self.busy_seconds = 0.0  # thread CPU seconds of all turns and charges so far
        self.turns = 0
        self._local = threading.local()  # per thread: the thread_time() its next charge counts from

    def mark(self, since_thread_start: bool = False) -> None:
        """Count this thread's CPU from now on, or from the thread's start (a thread per request:
        all it did for the request counts, starting the thread and reading the head included)."""
        self._local.mark = 0.0 if since_thread_start else time.thread_time()

    def charge_thread(self) -> None:
        """Charge this thread's CPU since its mark or last charge (a request's end, after its writes)."""
        now = time.thread_time()
        mark = getattr(self._local, "mark", now)
        self._local.mark = now
        if self.max_busy_ratio < 1.0:
            self.charge(now - mark)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this thread's turn and the cool-down, run the block, charge the thread's CPU
        since its mark or last charge (since the block's start when it has neither)."""
        if self.max_busy_ratio >= 1.0 or self.stop.is_set() or not self.paced():
            yield  # unlimited, nothing to protect, or shutting down: close() must not wait behind a queue
            return
        with self._lock:
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            called = self._waiting[ticket] = threading.Event()
            if self._serving == ticket:
                called.set()
        try:
            called.wait()  # set when the ticket before ours is done, or by wake()
            # our turn: the others stay parked on their events; a charge meanwhile pushes the start back
            while (delay := self._next_start - time.monotonic()) > 0 and not self.stop.is_set():
                self.stop.wait(delay)
            if not hasattr(self._local, "mark"):
                self.mark()
            try:
                yield
            finally:
                self.charge_thread()
        finally:
            with self._lock:
                del self._waiting[ticket]
                self._serving += 1
                self.turns += 1
                following = self._waiting.get(self._serving)
            if following is not None:
                following.set()

    def charge(self, seconds: float) -> None:
        """Count `seconds` of server CPU done outside a turn (a socket write): delays the next turn."""
        seconds = max(0.0, seconds)
        with self._lock:
            self.busy_seconds += seconds
            # the start may lag behind now by a burst's cool-down: that much CPU passes unpaced
            now = time.monotonic()
            self._next_start = (max(self._next_start, now - BURST_SECONDS * self._cooldown_per_busy)
                                + seconds * self._cooldown_per_busy)

    def wake(self) -> None:
        """Wake every waiting turn (call after setting `stop`)."""
        with self._lock:
            waiting = list(self._waiting.values())
        for called in waiting:
            called.set()
