"""The request handler of the trainer's HTTP server: parsing, basic auth, the route table, the answers.

One `Handler` per connection (http.server's model), GET only, HTTP/1.1 with
keep-alive: a scraper or a browser that keeps its connection (Prometheus does)
costs one request's work per scrape, not a TCP handshake and a new thread too.
An event stream, a CSV export, an error and any request with a body end by
closing the connection. Routes live in one table, `ROUTES`; each `route_<name>` builds its body under a turn
of the server's duty-cycle limiter (exporter.limiter) and writes it outside the
turn, so a slow reader never holds anyone else's turn. Nothing maps a request
path to a file.

Deliberately not here: the listener, its threads and shutdown (exporter.server),
the event stream's loop (exporter.stream), making the bodies (exporter.views,
once per change), computing figures (exporter.monitor, exporter.status).
"""

from __future__ import annotations

import itertools
import re
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from . import stream
from .views import json_bytes

REQUEST_TIMEOUT_SECONDS = 10.0  # per socket read/write: a client this slow is dropped
# how long a kept-alive connection waits for its next request: longer than a 1-minute scrape
# interval (Prometheus' default; this project's config scrapes every 15 s), so scrapes reuse it
IDLE_SECONDS = 65.0

ROUTES = {  # path -> handler method; the one place a route is added
    "/": "page",
    "/metrics": "metrics",
    "/healthz": "healthz",
    "/api/status": "status",
    "/api/history": "history",
    "/api/model": "model",
    "/api/stream": "stream",
    "/export.csv": "export_csv",
}


class BadRequest(ValueError):
    """A query the client must fix: answered 400 with a JSON error."""


def cursor_param(value: Optional[str], name: str) -> Optional[int]:
    """A non-negative integer (an iteration, a count) from a query parameter or header, None when absent."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):  # ASCII digits only: \d also takes "١٢"
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class Handler(BaseHTTPRequestHandler):
    """Answers one connection's request: GET on a route of ROUTES, else 404 or 405."""

    # set on the subclass MetricsServer makes: the exporter.monitor.TrainingMonitor it serves and
    # the exporter.server.MetricsServer itself (not imported: that module imports this one)
    monitor: Any
    owner: Any
    timeout = REQUEST_TIMEOUT_SECONDS  # StreamRequestHandler applies it to the socket
    server_version = "nanogpt-monitor"
    protocol_version = "HTTP/1.1"  # keep-alive; an HTTP/1.0 request gets one answer and a close

    def setup(self) -> None:
        self.owner.limiter.mark(since_thread_start=True)  # all of a request's CPU is charged, its head included
        super().setup()

    _answered = False  # set once this connection answered a request: the next one may wait idle

    def handle_one_request(self) -> None:
        # each request's head (a kept-alive connection's next one too) is under the head deadline,
        # from its first byte on; before it, a kept-alive connection may wait idle_seconds
        self._responded = False
        if self.owner.closing.is_set() or (self._answered and not self._next_request_started()):
            self.close_connection = True  # the server closed, or the client left the connection idle
            return
        self.owner.head_started(self.connection)
        super().handle_one_request()
        self._answered = True

    def _next_request_started(self) -> bool:
        """Wait up to the server's idle_seconds for the first byte of a kept-alive connection's next
        request (already there when pipelined); False when none came or the connection closed."""
        self.connection.settimeout(self.owner.idle_seconds)
        try:
            return bool(self.rfile.peek(1))
        except OSError:  # the idle time ran out (TimeoutError), or close() shut the connection down
            return False
        finally:
            self.connection.settimeout(self.timeout)

    def finish(self) -> None:
        self.owner.head_done(self.connection, closed=True)
        try:
            super().finish()
        finally:
            self.owner.limiter.charge_thread()  # what the request cost after its last turn (the writes)

    def parse_request(self) -> bool:
        """http.server's request parsing, then basic auth (when configured) for every method."""
        parsed = super().parse_request()
        self.owner.head_done(self.connection)
        if not parsed:
            if not self._responded:  # a blank request line: http.server would close without a word
                self.send_error(400, "Empty request line")
            return False
        if self.owner.auth is None or self.owner.auth.allows(self.headers.get("Authorization")):
            return True
        self._send(401, b'{"error":"unauthorized"}', "application/json",
                   {"WWW-Authenticate": 'Basic realm="nanogpt-monitor", charset="UTF-8"'})
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        route = ROUTES.get(url.path)
        if route is None:
            return self._send(404, b'{"error":"not found"}', "application/json")
        try:
            getattr(self, "route_" + route)(parse_qs(url.query))
        except BadRequest as e:
            self._send(400, json_bytes({"error": str(e)}), "application/json")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True  # the client went away or stalled: nothing to answer
        except Exception as e:  # a bug here must not kill the server thread silently
            self.monitor.report_error("http " + url.path, e)
            if not self._responded:  # mid-stream, a status line can no longer be sent: just close
                self._send(500, json_bytes({"error": f"internal error: {type(e).__name__}"}), "application/json")

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any method but GET, even ones http.server does not know
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self._send(405, b'{"error":"method not allowed"}', "application/json", {"Allow": "GET"})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # training logs stay readable; Prometheus scrapes every few seconds

    _responded = False  # set once a status line went out

    def send_response(self, code: int, message: Optional[str] = None) -> None:
        self._responded = True
        if self.request_version == "HTTP/0.9":  # ("GET /" with no version, or HTTP/0.9 named)
            self.request_version = "HTTP/1.0"  # http.server would answer a bare body: no status, no headers
        super().send_response(code, message)

    def end_headers(self) -> None:
        # every answer, errors included: a browser must never sniff JSON, CSV or an error page as HTML
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def _keeps_connection(self, code: int) -> bool:
        """Whether the connection may carry another request after this answer: not after an
        error, another method than GET, a request with a body (which was never read), or an
        HTTP/1.0 request (which would need a Connection: keep-alive answer to stay open)."""
        headers = getattr(self, "headers", None) or {}
        return code < 400 and self.command == "GET" and self.request_version == "HTTP/1.1" and not (
            headers.get("Content-Length") or headers.get("Transfer-Encoding"))

    def _send(self, code: int, body: bytes, content_type: str, headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if not self._keeps_connection(code):
            self.send_header("Connection", "close")  # http.server then closes it after this answer
        for name, value in (headers or {}).items():
            if name.lower() != "x-content-type-options":  # end_headers sends it, once
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)  # outside a turn: a slow reader must not hold everyone's

    def _send_lines(self, lines: Iterable[str], content_type: str, headers: dict) -> None:
        """Stream text without holding it all: no Content-Length, the connection close ends it."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        lines, more = iter(lines), True
        while more:
            with self.owner.limiter.turn():  # one turn per chunk: a long export yields to scrapes in between
                chunk = list(itertools.islice(lines, 512))
                data, more = "".join(chunk).encode(), len(chunk) == 512
            self.wfile.write(data)  # charged with the next turn

    # --- routes ----------------------------------------------------------------------------------

    def route_metrics(self, query: dict) -> None:
        """Prometheus exposition as prometheus_client negotiates it (OpenMetrics, gzip, name[] filter)."""
        with self.owner.limiter.turn():
            body, content_type, headers = self.owner.views.metrics(
                self.headers.get("Accept"), self.headers.get("Accept-Encoding"), query.get("name[]"))
        self._send(200, body, content_type, headers)

    def route_healthz(self, query: dict) -> None:  # no turn: a liveness probe must answer at once
        self._send(200, b"ok\n", "text/plain; charset=utf-8")

    def route_status(self, query: dict) -> None:
        with self.owner.limiter.turn():
            body = self.owner.views.status()
        self._send(200, body, "application/json")

    def route_history(self, query: dict) -> None:
        """?since=ITER / ?until=ITER for a range; ?format=columns (with ?fields=a,b) for an array per
        field; ?points=N for an overview of about N points (exporter.overview.overview_indices)."""
        since = cursor_param(query.get("since", [None])[-1], "since")
        until = cursor_param(query.get("until", [None])[-1], "until")
        points = cursor_param(query.get("points", [None])[-1], "points")
        fields = query.get("fields", [None])[-1]
        try:
            with self.owner.limiter.turn():
                body = self.monitor.history.to_json(self.monitor.run_id, self.monitor.rank, since,
                                                    layout=query.get("format", ["points"])[-1],
                                                    names=None if fields is None else fields.split(","),
                                                    until=until, points=points)
        except ValueError as e:  # a bad format or field name: the client's to fix
            raise BadRequest(str(e)) from None
        self._send(200, body, "application/json")

    def route_model(self, query: dict) -> None:
        with self.owner.limiter.turn():
            body = self.owner.views.model()
        self._send(200, body, "application/json")

    def route_export_csv(self, query: dict) -> None:
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", self.monitor.run_id)
        self._send_lines(self.monitor.csv_lines(), "text/csv; charset=utf-8",
                         {"Content-Disposition": f'attachment; filename="nanogpt-{safe_id}.csv"'})

    def route_page(self, query: dict) -> None:
        with self.owner.limiter.turn():
            body, headers = self.owner.views.page()  # headers: the page's CSP, nosniff
        self._send(200, body, "text/html; charset=utf-8", headers)

    def route_stream(self, query: dict) -> None:
        """Server-Sent Events (exporter.stream); resumes after Last-Event-ID or ?since=."""
        cursor = cursor_param(self.headers.get("Last-Event-ID"), "Last-Event-ID")
        if cursor is None:
            cursor = cursor_param(query.get("since", [None])[-1], "since")
        stream.serve(self, cursor)
