"""/metrics bodies rendered just before a regular scraper asks for them.

Rendering the exposition (reading every rank's shared files, merging them, escaping a few hundred
label values, gzip) takes ~2 ms unloaded and up to ~10 ms beside a busy trainer on a small machine,
and a scrape waits for all of it. A scraper such as Prometheus asks at a fixed interval over a
kept-alive connection, so the next scrape's time is known: the body is rendered a little before it
(`lead`) and the scrape is answered with that body at once.

A scraper is one connection (its peer address) and what it asks for (encoder, gzip, name[]
filter). After its second scrape its interval is known; every scrape then schedules the render
of its next body at `last + interval - lead`. A scrape is served the rendered-ahead body only when
that body is at most `max_age` old (min(MAX_AGE_SECONDS, interval / 2)); otherwise (the first
scrapes, a one-off curl, a scraper that came late or changed its pace) it is rendered on the spot,
as before. So every figure a scrape returns is at most `max_age` older than the scrape, and the
work per scrape is the same one render: it is only moved off the request's path.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable, Optional

MAX_AGE_SECONDS = 1.0  # the oldest a body may be when it is served (as for the page's shared bodies)
MAX_LEAD_SECONDS = 0.1  # how long before the expected scrape its body is rendered, at most
MAX_INTERVAL_SECONDS = 300.0  # a scraper slower than this is not worth holding a timer for
MAX_SCRAPERS = 16  # the connections remembered at once (the oldest is forgotten first)


@dataclass
class _Scraper:
    last: float  # monotonic time of its last scrape
    interval: Optional[float] = None  # between its last two scrapes
    body: Optional[bytes] = None  # rendered ahead of its next scrape ...
    rendered: float = 0.0  # ... at this monotonic time
    timer: Optional[asyncio.TimerHandle] = None

    @property
    def lead(self) -> float:
        return min(MAX_LEAD_SECONDS, self.interval / 4) if self.interval else 0.0

    @property
    def max_age(self) -> float:
        return min(MAX_AGE_SECONDS, self.interval / 2) if self.interval else 0.0


class ScrapeAhead:
    """Bodies for regular scrapers, rendered ahead by `render(what)` (see the module docstring).

    `before_render`: awaited before each render ahead (the monitor's read of the run directory, so a
    body rendered ahead has every event recorded before it, as a request's own render does)."""

    def __init__(self, render: Callable[[Hashable], bytes], before_render: Callable[[], Awaitable[None]],
                 on_error: Callable[[Exception], None]):
        self._render, self._before_render, self._on_error = render, before_render, on_error
        self._scrapers: OrderedDict[Hashable, _Scraper] = OrderedDict()
        self._rendering: set[asyncio.Task] = set()  # held: the loop keeps only weak references to tasks
        self.served_ahead = 0  # scrapes answered with a body rendered before they came

    def __len__(self) -> int:
        """The scrapers remembered."""
        return len(self._scrapers)

    def body(self, connection: Hashable, what: Hashable) -> bytes:
        """The body for this scrape, and the next one's render scheduled. `connection`: the client's
        address (None, where the transport has none, is never rendered ahead); `what`: equal for two
        requests for the same body (the render's argument)."""
        if connection is None:
            return self._render(what)
        now, key = time.monotonic(), (connection, what)
        scraper = self._scrapers.pop(key, None)
        if scraper is not None and scraper.body is not None and now - scraper.rendered <= scraper.max_age:
            body = scraper.body
            self.served_ahead += 1
        else:
            body = self._render(what)
        if scraper is None:
            scraper = _Scraper(last=now)
        else:
            scraper.interval, scraper.last = now - scraper.last, now
        scraper.body = None
        self._scrapers[key] = scraper  # the newest at the end
        self._schedule(key, scraper)
        while len(self._scrapers) > MAX_SCRAPERS:
            self._forget(next(iter(self._scrapers)))
        return body

    def _schedule(self, key: Hashable, scraper: _Scraper) -> None:
        if scraper.timer is not None:
            scraper.timer.cancel()
            scraper.timer = None
        if scraper.interval is None or not 0 < scraper.interval <= MAX_INTERVAL_SECONDS:
            return
        delay = max(0.0, scraper.last + scraper.interval - scraper.lead - time.monotonic())
        scraper.timer = asyncio.get_running_loop().call_later(delay, self._start_render, key, scraper)

    def _start_render(self, key: Hashable, scraper: _Scraper) -> None:
        task = asyncio.ensure_future(self._render_ahead(key, scraper))
        self._rendering.add(task)
        task.add_done_callback(self._rendering.discard)

    async def _render_ahead(self, key: Hashable, scraper: _Scraper) -> None:
        scraper.timer, last = None, scraper.last
        try:
            await self._before_render()
            # still remembered (not forgotten meanwhile), and its scrape has not come meanwhile
            if self._scrapers.get(key) is scraper and scraper.last == last:
                scraper.body, scraper.rendered = self._render(key[1]), time.monotonic()
        except Exception as e:  # the scrape itself will render and answer (or report) it
            self._on_error(e)

    def _forget(self, key: Hashable) -> None:
        scraper = self._scrapers.pop(key)
        if scraper.timer is not None:
            scraper.timer.cancel()

    def close(self) -> None:
        """Cancel every scheduled and running render (the server is closing)."""
        while self._scrapers:
            self._forget(next(iter(self._scrapers)))
        for task in list(self._rendering):
            task.cancel()
