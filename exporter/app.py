"""The monitor process's HTTP server (aiohttp): /metrics, health, JSON, SSE, CSV and the live page.

It runs in a process of its own at a lower CPU priority than training, so a slow, stuck or flooding
client holds a coroutine, never a thread of the training process; `runner()` sets the limits a
request meets (line and header sizes, header count, the idle timeout that also bounds a trickled
request head). A background task polls the run directory and wakes the event streams on news.
Routes are GET only (HEAD is a 405 like any other method), behind basic auth and TLS when
configured, and answer errors as JSON, except a request aiohttp cannot parse (its own plain-text
400). Bodies every client asks for (page, status, model) are made once per change and at most
once a second (`Monitor._cached`); a regular scraper's /metrics body is rendered just before its
next scrape (exporter.scrapeahead), so the scrape does not wait for it.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import page
from .journal import strict_json
from .node import NodeMonitor
from .runview import RunView
from .samples import MAX_PAGE
from .scrapeahead import ScrapeAhead
from .webconfig import BasicAuth, WebConfig

POLL_SECONDS = 0.1  # how often the run directory is read while a stream is open: a new point's latency
# and while none is (every request reads it first anyway): how soon a killed trainer is noticed
IDLE_POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0  # SSE comment interval, so proxies keep an idle stream open
SSE_RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects
MAX_AGE_SECONDS = 1.0  # how old a shared body may be when no event changed it (the live iteration, the clock)
CSV_CHUNK_LINES = 512
DEFAULT_SAMPLES = 10  # /api/samples without ?limit=
# how long a kept-alive connection waits for its next request: longer than a 1-minute scrape
# interval (Prometheus' default; this project's config scrapes every 15 s), so scrapes reuse it.
# aiohttp starts the same clock when a connection opens, so it also bounds a request head's trickle.
IDLE_SECONDS = 65.0
SHUTDOWN_SECONDS = 1.0  # how long closing waits for answers in flight (a stuck download) before cutting them
MAX_LINE_BYTES = 8190  # request line and each header line; longer is a 400, as in most servers' defaults
MAX_HEADERS = 100
BCRYPT_THREADS = 2  # password checks at once: a flood of wrong ones costs this many cores at most
ROUTES = ("/", "/metrics", "/healthz", "/api/status", "/api/history", "/api/model", "/api/stream", "/export.csv",
          "/api/samples")


def json_bytes(value: Any) -> bytes:
    """Strict JSON (non-finite floats as null, which JSON.parse accepts; NaN would not be)."""
    return json.dumps(strict_json(value), allow_nan=False, separators=(",", ":")).encode()


def runner(monitor: "Monitor", idle_seconds: float = IDLE_SECONDS) -> web.AppRunner:
    """The aiohttp runner for `monitor`'s routes, with the limits a hostile client meets."""
    logging.getLogger("aiohttp.server").addFilter(_client_errors)
    return web.AppRunner(monitor.app(), access_log=None, handle_signals=False, handler_cancellation=True,
                         keepalive_timeout=idle_seconds, shutdown_timeout=SHUTDOWN_SECONDS,
                         max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS)


def _client_errors(record: logging.LogRecord) -> bool:
    """aiohttp logs each request it cannot parse with a traceback: those are a client's (or a port
    scanner's) bytes, answered 400, not our bug, and must not flood the training log."""
    return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


def _error(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=json_bytes({"error": message}), content_type="application/json",
                        headers=headers)


class BadRequest(ValueError):
    """A query the client must fix: answered 400 with a JSON error."""


def query_param(request: web.Request, name: str) -> Optional[str]:
    """A query parameter; the last one counts when it is repeated (as urllib's parse_qs users expect)."""
    values = request.query.getall(name, ())
    return values[-1] if values else None


def cursor_param(value: Optional[str], name: str) -> Optional[int]:
    """A non-negative integer (an iteration, a count) from a query parameter or header, None when absent."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):  # ASCII digits only: \d also takes "١٢"
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Monitor:
    """The routes over one NodeMonitor; `changed` wakes the event streams after each poll that found news."""

    def __init__(self, node: NodeMonitor, web_config: Optional[WebConfig] = None,
                 keepalive_seconds: float = KEEPALIVE_SECONDS):
        self.node, self.keepalive_seconds = node, keepalive_seconds
        self.auth = BasicAuth(web_config.users) if web_config is not None and web_config.users else None
        self.changed = asyncio.Condition()
        self.closing = asyncio.Event()
        self.open_streams = 0  # the watcher polls often only while a page is listening
        self._cache: dict[tuple, tuple[int, float, Any]] = {}
        self.scrape_ahead = ScrapeAhead(self._exposition, self.refresh,
                                        functools.partial(self.node.report_error, "metrics ahead"))
        self._bcrypt = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt") if self.auth else None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        for path, handler in zip(ROUTES, (self.page, self.metrics, self.healthz, self.status, self.history,
                                          self.model, self.stream, self.export_csv, self.samples)):
            app.router.add_get(path, handler, allow_head=False)  # SPEC: HEAD is 405 like every other method
        return app

    async def refresh(self) -> None:
        """Read what the run directory gained; wake the streams when something changed. Each request
        does this first (a stat per rank when nothing did), so an answer includes every event
        recorded before it was asked for."""
        changed = False
        while True:
            try:
                changed |= self.node.poll()
            except Exception as e:  # the server goes on with what it has
                self.node.report_error("poll", e)
                break
            if not self.node.behind:
                break
            await asyncio.sleep(0)  # a long journal is replayed in parts: other requests go on meanwhile
        if changed:
            async with self.changed:
                self.changed.notify_all()

    async def watch(self) -> None:
        """Poll the run directory until closing: often while event streams are open, seldom when
        none is (an idle monitor on every node of a fleet should cost next to nothing)."""
        while not self.closing.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(self.closing.wait(), POLL_SECONDS if self.open_streams else IDLE_POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
        self.scrape_ahead.close()
        async with self.changed:
            self.changed.notify_all()

    # --- every request -------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """HTTP/1.x only, basic auth, JSON errors for every failure, nosniff on every answer."""
        if request.version.major != 1:  # aiohttp's parser takes "HTTP/2.0" and a bare HTTP/0.9 line
            response: web.StreamResponse = _error(505, "HTTP version not supported: use HTTP/1.0 or 1.1")
            response.force_close()
        elif self.auth is not None and not await self._authorized(request.headers.get("Authorization")):
            response = _error(
                401, "unauthorized", {"WWW-Authenticate": 'Basic realm="nanogpt-monitor", charset="UTF-8"'})
        else:
            try:
                if request.path != "/healthz":
                    await self.refresh()
                response = await handler(request)
            except BadRequest as e:
                response = _error(400, str(e))
            except web.HTTPMethodNotAllowed:
                response = _error(405, "method not allowed", {"Allow": "GET"})
            except web.HTTPNotFound:
                response = _error(404, "not found")
            except web.HTTPException as e:
                response = _error(e.status, e.reason)
            except (ConnectionError, asyncio.CancelledError):  # the client left: not an error of ours to count
                raise
            except Exception as e:  # a bug here must answer 500, not kill the server
                self.node.report_error("http " + request.path, e)
                response = _error(500, f"internal error: {type(e).__name__}")
        if not response.prepared:
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def _authorized(self, header: Optional[str]) -> bool:
        """Credentials that passed before are answered at once; a new one's bcrypt check (~50 ms by
        design, more with more rounds) runs on a worker thread (bcrypt lets go of the GIL), so a flood
        of wrong passwords queues there instead of stalling every other answer, /metrics included."""
        assert self.auth is not None
        if self.auth.remembered(header):
            return True
        return await asyncio.get_running_loop().run_in_executor(self._bcrypt, self.auth.allows, header)

    def _view(self, request: web.Request) -> RunView:
        rank = cursor_param(query_param(request, "rank"), "rank")
        view = self.node.view(rank)
        if view is None:
            if rank is not None:
                raise BadRequest(f"no rank {rank} records on this node (ranks: {sorted(self.node.views)})")
            view = self.node.placeholder
        return view

    def _cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        """A body made at most once per change and per MAX_AGE_SECONDS."""
        entry, now = self._cache.get(key), time.monotonic()
        if entry is None or entry[0] != self.node.generation or now - entry[1] >= MAX_AGE_SECONDS:
            entry = self._cache[key] = (self.node.generation, now, make())
        return entry[2]

    # --- routes --------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type="text/plain")

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition as prometheus_client negotiates it (OpenMetrics, gzip, name[] filter);
        a regular scraper's body is rendered just before it asks (exporter.scrapeahead)."""
        accept = request.headers.get("Accept")
        content_type = choose_encoder(accept)[1]
        names = request.query.getall("name[]", None)
        zipped = gzip_accepted(request.headers.get("Accept-Encoding"))
        what = (accept, zipped, None if names is None else tuple(names))  # equal for equal requests
        body = self.scrape_ahead.body(request.transport.get_extra_info("peername") if request.transport else None,
                                      what)
        return web.Response(body=body, headers={"Content-Type": content_type,
                                                **({"Content-Encoding": "gzip"} if zipped else {})})

    def _exposition(self, what: tuple) -> bytes:
        """A /metrics body, timed (nanogpt_exporter_scrape_duration_seconds: the render, not the answer)."""
        started = time.perf_counter()
        accept, zipped, names = what
        encoder = choose_encoder(accept)[0]
        registry = self.node.registry
        body = encoder(registry if names is None else registry.restricted_registry(names))
        body = gzip.compress(body) if zipped else body
        self.node.record_scrape(time.perf_counter() - started)
        return body

    async def status(self, request: web.Request) -> web.Response:
        view = self._view(request)
        return web.Response(body=self._status_body(view), content_type="application/json")

    def _status_body(self, view: RunView) -> bytes:
        """/api/status's body, shared with every stream's status event: made once per change (it
        costs milliseconds over a long history), not once per client."""
        return self._cached(("status", view.rank), lambda: json_bytes(view.status()))

    async def model(self, request: web.Request) -> web.Response:
        view = self._view(request)
        return web.Response(body=self._cached(("model", view.rank), lambda: json_bytes(view.model())),
                            content_type="application/json")

    async def history(self, request: web.Request) -> web.Response:
        """?since=ITER / ?until=ITER for a range; ?format=columns (with ?fields=a,b) for an array per
        field; ?points=N for an overview of about N points."""
        view, query = self._view(request), functools.partial(query_param, request)
        since, until = cursor_param(query("since"), "since"), cursor_param(query("until"), "until")
        points, fields = cursor_param(query("points"), "points"), query("fields")
        try:
            body = view.history.to_json(view.run_id, view.rank, since, layout=query("format") or "points",
                                        names=None if fields is None else fields.split(","), until=until,
                                        points=points)
        except ValueError as e:  # a bad format or field name: the client's to fix
            raise BadRequest(str(e)) from None
        return web.Response(body=body, content_type="application/json")

    async def samples(self, request: web.Request) -> web.Response:
        """What the model wrote, newest first: ?limit=N (default 10, at most 100), ?before=ITER for
        the page before an iteration; `more` says whether older ones remain."""
        view, query = self._view(request), functools.partial(query_param, request)
        limit = cursor_param(query("limit"), "limit")
        limit = DEFAULT_SAMPLES if limit is None else limit
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
        found, more = view.samples.page(limit, cursor_param(query("before"), "before"))
        return web.Response(body=json_bytes({"run_id": view.run_id, "rank": view.rank, "more": more,
                                             "samples": [s.to_json() for s in found]}),
                            content_type="application/json")

    async def page(self, request: web.Request) -> web.Response:
        view = self._view(request)
        body, headers = self._cached(("page", view.rank), lambda: page.render(view))
        return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8", **headers})

    async def export_csv(self, request: web.Request) -> web.StreamResponse:
        view = self._view(request)
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", view.run_id)
        response = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8", "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="nanogpt-{safe_id}.csv"'})
        await response.prepare(request)
        lines = iter(view.csv_lines())
        try:
            while chunk := list(itertools.islice(lines, CSV_CHUNK_LINES)):
                await response.write("".join(chunk).encode())  # waits for a slow reader; others go on
            await response.write_eof()
        except ConnectionError:  # the client left mid-download: nothing to answer, nothing to log
            pass
        return response

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: a `point` event per logged point and a `status` event per change,
        resuming after Last-Event-ID or ?since= with no gap and no repeat."""
        view = self._view(request)
        cursor = cursor_param(request.headers.get("Last-Event-ID"), "Last-Event-ID")  # a reconnect's: newer
        since = cursor_param(query_param(request, "since"), "since")  # checked even when the header wins
        cursor = since if cursor is None else cursor
        if cursor is None:
            last = view.history.last()
            cursor = last.iteration if last is not None else -1
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})  # no proxy buffering
        await response.prepare(request)
        self.open_streams += 1
        try:
            await self._events(response, view, cursor)
        except ConnectionError:  # the client left: its handler ends here, quietly
            pass
        finally:
            self.open_streams -= 1
        return response

    async def _events(self, response: web.StreamResponse, view: RunView, cursor: int) -> None:
        """Write a stream's events until the server closes."""
        await response.write(f"retry: {SSE_RETRY_MILLISECONDS}\n\n".encode())
        sent_status, generation = None, None
        while not self.closing.is_set():
            if generation != self.node.generation:
                generation = self.node.generation
                view = self.node.view(view.rank) or view  # a view created since (the first rank appeared)
                points = view.history.since(cursor)
                data = "".join(f"id: {p.iteration}\nevent: point\ndata: {p.json}\n\n" for p in points).encode()
                cursor = points[-1].iteration if points else cursor
                if (view.run_id, view.status_version) != sent_status:
                    sent_status = (view.run_id, view.status_version)
                    data += b"event: status\ndata: " + self._status_body(view) + b"\n\n"
                if data:
                    await response.write(data)
            if not await self._news(generation):
                await response.write(b": keepalive\n\n")  # not under the lock: a slow reader holds up no one

    async def _news(self, generation: int) -> bool:
        """Wait until a poll found news or the server closes (True), or keepalive_seconds pass (False).
        True at once when either came while the caller was writing: its notify_all is gone by now."""
        async with self.changed:
            if self.closing.is_set() or generation != self.node.generation:
                return True
            try:
                await asyncio.wait_for(self.changed.wait(), self.keepalive_seconds)
                return True
            except asyncio.TimeoutError:
                return False
