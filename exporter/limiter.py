"""A duty-cycle limit on the CPU the HTTP server may take from the training process.

Every piece of request work (rendering /metrics, building a JSON body, a CSV
chunk, an SSE event) takes a turn: turns run one at a time, first come first
served, and after a turn that used t seconds of thread CPU the next may start
only t * (1/ratio - 1) seconds later. So however many clients arrive, the
server's work stays at most `ratio` of one core: clients wait longer instead
of training slowing. Waiting is a Condition wait or a sleep (the GIL is free
for the trainer meanwhile).

Deliberately not here: socket writes. They happen outside a turn (a slow
client must not hold everyone's turn for its socket timeout); their CPU is
charged afterwards with `charge()`, so it still pushes the next turn back.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

DEFAULT_MAX_BUSY_RATIO = 0.2  # the server may use at most a fifth of one core


class DutyLimiter:
    """First-come-first-served turns with a cool-down proportional to each turn's CPU time."""

    def __init__(self, max_busy_ratio: float = DEFAULT_MAX_BUSY_RATIO, stop: threading.Event | None = None):
        if not 0.0 < max_busy_ratio <= 1.0:
            raise ValueError(f"max_busy_ratio must be in (0, 1], got {max_busy_ratio!r}")
        self.max_busy_ratio = max_busy_ratio
        self.stop = stop or threading.Event()  # once set (the server closing), nobody waits any more
        self._cooldown_per_busy = 1.0 / max_busy_ratio - 1.0  # seconds idle per second of work
        self._cond = threading.Condition()
        self._next_ticket = 0  # FIFO tickets: a plain Lock is not fair and could starve one client
        self._serving = 0
        self._next_start = time.monotonic()  # monotonic seconds before which no turn starts
        self.busy_seconds = 0.0  # thread CPU seconds of all turns and charges so far
        self.turns = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this thread's turn and the cool-down, run the block, charge its thread CPU time."""
        if self.max_busy_ratio >= 1.0 or self.stop.is_set():
            yield  # unlimited, or shutting down: close() must not wait behind a queue
            return
        with self._cond:
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            while self._serving != ticket and not self.stop.is_set():
                self._cond.wait()
        try:
            # our turn: the others stay parked in _cond.wait; a charge meanwhile pushes the start back
            while (delay := self._next_start - time.monotonic()) > 0 and not self.stop.is_set():
                self.stop.wait(delay)
            started = time.thread_time()
            try:
                yield
            finally:
                self.charge(time.thread_time() - started)
        finally:
            with self._cond:
                self._serving += 1
                self.turns += 1
                self._cond.notify_all()

    def charge(self, seconds: float) -> None:
        """Count `seconds` of server CPU done outside a turn (a socket write): delays the next turn."""
        seconds = max(0.0, seconds)
        with self._cond:
            self.busy_seconds += seconds
            self._next_start = max(self._next_start, time.monotonic()) + seconds * self._cooldown_per_busy

    @contextmanager
    def charged(self) -> Iterator[None]:
        """Run the block now (no turn) and charge its thread CPU time."""
        started = time.thread_time()
        try:
            yield
        finally:
            if self.max_busy_ratio < 1.0:
                self.charge(time.thread_time() - started)

    def wake(self) -> None:
        """Wake every waiting turn (call after setting `stop`)."""
        with self._cond:
            self._cond.notify_all()
