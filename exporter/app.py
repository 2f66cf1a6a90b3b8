"""The monitor process's HTTP server (aiohttp): /metrics, health, JSON, SSE, CSV and the live page.

One asyncio loop in a process of its own, at a lower CPU priority than
training: a slow, stuck or flooding client holds a coroutine, never a thread
of the training process, and aiohttp's own limits bound what a request may
send (request line and header sizes, header count, an idle kept-alive
connection's lifetime). A background task polls the run directory a few times
a second (exporter.node) and wakes the event streams when anything changed.

Routes are GET (and HEAD) only, each answers JSON errors, and basic auth and
TLS (exporter.webconfig) cover every route. Bodies that every client asks for
(the page, status, model) are made once per change and at most once a second.

Deliberately not here: what the figures are (exporter.node, exporter.runview,
exporter.status), the page's HTML (exporter.page), starting and stopping the
process (exporter.launch, exporter.cli).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import math
import re
import time
from typing import Any, Callable, Optional

from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import page
from .node import NodeMonitor
from .runview import RunView
from .webconfig import BasicAuth, WebConfig

POLL_SECONDS = 0.1  # how often the run directory is read: a new point reaches the page this late at most
KEEPALIVE_SECONDS = 15.0  # SSE comment interval, so proxies keep an idle stream open
SSE_RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects
MAX_AGE_SECONDS = 1.0  # how old a shared body may be when no event changed it (the live iteration, the clock)
CSV_CHUNK_LINES = 512
# how long a kept-alive connection waits for its next request: longer than a 1-minute scrape
# interval (Prometheus' default; this project's config scrapes every 15 s), so scrapes reuse it
IDLE_SECONDS = 65.0
ROUTES = ("/", "/metrics", "/healthz", "/api/status", "/api/history", "/api/model", "/api/stream", "/export.csv")


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


def _error(status: int, message: str, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=json_bytes({"error": message}), content_type="application/json",
                        headers=headers)


class BadRequest(ValueError):
    """A query the client must fix: answered 400 with a JSON error."""


def cursor_param(value: Optional[str], name: str) -> Optional[int]:
    """A non-negative integer (an iteration, a count) from a query parameter or header, None when absent."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):  # ASCII digits only: \d also takes "١٢"
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Monitor:
    """The routes over one NodeMonitor; `changed` wakes the event streams after each poll that found news."""

    def __init__(self, node: NodeMonitor, web_config: Optional[WebConfig] = None):
        self.node = node
        self.auth = BasicAuth(web_config.users) if web_config is not None and web_config.users else None
        self.changed = asyncio.Condition()
        self.closing = asyncio.Event()
        self._cache: dict[tuple, tuple[int, float, Any]] = {}
        self._scrape_gauges: dict[tuple, Any] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        for path, handler in zip(ROUTES, (self.page, self.metrics, self.healthz, self.status, self.history,
                                          self.model, self.stream, self.export_csv)):
            app.router.add_get(path, handler)
        return app

    async def refresh(self) -> None:
        """Read what the run directory gained; wake the streams when something changed. Each request
        does this first (a stat per rank when nothing did), so an answer includes every event
        recorded before it was asked for."""
        try:
            changed = self.node.poll()
        except Exception as e:  # the server goes on with what it has
            self.node.report_error("poll", e)
            changed = False
        if changed:
            async with self.changed:
                self.changed.notify_all()

    async def watch(self) -> None:
        """Poll the run directory until closing, for the event streams."""
        while not self.closing.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(self.closing.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
        async with self.changed:
            self.changed.notify_all()

    # --- every request -------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Basic auth, JSON errors for every failure, nosniff on every answer."""
        if self.auth is not None and not self.auth.allows(request.headers.get("Authorization")):
            response: web.StreamResponse = _error(
                401, "unauthorized", {"WWW-Authenticate": 'Basic realm="nanogpt-monitor", charset="UTF-8"'})
        else:
            try:
                if request.path != "/healthz":
                    await self.refresh()
                response = await handler(request)
            except BadRequest as e:
                response = _error(400, str(e))
            except web.HTTPMethodNotAllowed:
                response = _error(405, "method not allowed", {"Allow": "GET, HEAD"})
            except web.HTTPNotFound:
                response = _error(404, "not found")
            except web.HTTPException as e:
                response = _error(e.status, e.reason)
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as e:  # a bug here must answer 500, not kill the server
                self.node.report_error("http " + request.path, e)
                response = _error(500, f"internal error: {type(e).__name__}")
        if not response.prepared:
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _view(self, request: web.Request) -> RunView:
        rank = cursor_param(request.query.get("rank"), "rank")
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
        """Prometheus exposition as prometheus_client negotiates it (OpenMetrics, gzip, name[] filter)."""
        started = time.perf_counter()
        encoder, content_type = choose_encoder(request.headers.get("Accept"))
        names = request.query.getall("name[]", None)
        registry = self.node.registry
        body = encoder(registry if names is None else registry.restricted_registry(names))
        headers = {}
        if gzip_accepted(request.headers.get("Accept-Encoding")):
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        self.node.record_scrape(time.perf_counter() - started)
        return web.Response(body=body, headers={"Content-Type": content_type, **headers})

    async def status(self, request: web.Request) -> web.Response:
        view = self._view(request)
        body = self._cached(("status", view.rank), lambda: json_bytes(view.status()))
        return web.Response(body=body, content_type="application/json")

    async def model(self, request: web.Request) -> web.Response:
        view = self._view(request)
        return web.Response(body=self._cached(("model", view.rank), lambda: json_bytes(view.model())),
                            content_type="application/json")

    async def history(self, request: web.Request) -> web.Response:
        """?since=ITER / ?until=ITER for a range; ?format=columns (with ?fields=a,b) for an array per
        field; ?points=N for an overview of about N points."""
        view, query = self._view(request), request.query
        since, until = cursor_param(query.get("since"), "since"), cursor_param(query.get("until"), "until")
        points, fields = cursor_param(query.get("points"), "points"), query.get("fields")
        try:
            body = view.history.to_json(view.run_id, view.rank, since, layout=query.get("format", "points"),
                                        names=None if fields is None else fields.split(","), until=until,
                                        points=points)
        except ValueError as e:  # a bad format or field name: the client's to fix
            raise BadRequest(str(e)) from None
        return web.Response(body=body, content_type="application/json")

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
        while chunk := list(itertools.islice(lines, CSV_CHUNK_LINES)):
            await response.write("".join(chunk).encode())  # waits for a slow reader; others go on meanwhile
        await response.write_eof()
        return response

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: a `point` event per logged point and a `status` event per change,
        resuming after Last-Event-ID or ?since= with no gap and no repeat."""
        view = self._view(request)
        cursor = cursor_param(request.headers.get("Last-Event-ID"), "Last-Event-ID")
        if cursor is None:
            cursor = cursor_param(request.query.get("since"), "since")
        if cursor is None:
            last = view.history.last()
            cursor = last.iteration if last is not None else -1
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})  # no proxy buffering
        await response.prepare(request)
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
                    data += b"event: status\ndata: " + json_bytes(view.status()) + b"\n\n"
                if data:
                    await response.write(data)
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    await response.write(b": keepalive\n\n")
        return response
