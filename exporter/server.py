"""The one HTTP server of the training process: /metrics, health, JSON, SSE, CSV and the page.

A stdlib ThreadingHTTPServer in a daemon thread: one daemon thread per
connection, a socket timeout on every connection (a slow or stuck client gets
dropped and never blocks /metrics or training), and `close()` that stops the
listener and ends open event streams. Routes live in one table, `ROUTES`.
Request work takes turns under a duty-cycle limit (exporter.limiter, `max_busy_ratio`,
default 0.2 of one core), so a storm of clients waits instead of slowing training;
/healthz is exempt.
Only GET is served; nothing maps a request path to a file.

Basic auth and TLS, when a web config is given (exporter.webconfig), cover
every route. Deliberately not here: metric definitions (exporter.metrics),
the page's HTML (exporter.page).
"""

from __future__ import annotations

import errno
import gzip
import importlib
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder, gzip_accepted

from .limiter import DEFAULT_MAX_BUSY_RATIO, DutyLimiter
from .webconfig import BasicAuth, WebConfig

if TYPE_CHECKING:
    from .monitor import TrainingMonitor

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0  # per socket read/write: a client this slow is dropped
KEEPALIVE_SECONDS = 15.0  # SSE comment interval, so proxies keep an idle stream open
SSE_RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects

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

LANDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>nanogpt-monitor</title></head>
<body><h1>nanogpt-monitor</h1><ul>
<li><a href="/metrics">/metrics</a> (Prometheus)</li><li><a href="/api/status">/api/status</a></li>
<li><a href="/api/history">/api/history</a></li><li><a href="/api/model">/api/model</a></li>
<li><a href="/export.csv">/export.csv</a></li><li><a href="/healthz">/healthz</a></li></ul></body></html>
"""


class ServeError(OSError):
    """The server could not start; the message is one sentence."""


class PortInUseError(ServeError):
    """The host:port to serve on is taken by another process."""


class BadRequest(ValueError):
    """A query the client must fix: answered 400 with a JSON error."""


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


def _cursor(value: Optional[str], name: str) -> Optional[int]:
    """A non-negative iteration from a query parameter or header, None when absent."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):  # ASCII digits only: \d also takes "١٢"
        raise BadRequest(f"{name} must be a non-negative integer iteration, got {value!r}")
    return int(value)


class _Handler(BaseHTTPRequestHandler):
    monitor: "TrainingMonitor"  # set on the subclass MetricsServer makes
    owner: "MetricsServer"
    timeout = REQUEST_TIMEOUT_SECONDS  # StreamRequestHandler applies it to the socket
    server_version = "nanogpt-monitor"
    protocol_version = "HTTP/1.0"  # one request per connection: streams and CSV end by closing

    def setup(self) -> None:
        super().setup()
        self.owner.head_started(self.connection)  # until parse_request ends, under the head deadline

    def finish(self) -> None:
        self.owner.head_done(self.connection)
        super().finish()

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
            pass  # the client went away or stalled: nothing to answer
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

    def _send(self, code: int, body: bytes, content_type: str, headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            if name.lower() != "x-content-type-options":  # end_headers sends it, once
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            with self.owner.limiter.charged():  # outside a turn: a slow reader must not hold everyone's
                self.wfile.write(body)

    def _send_lines(self, lines: Iterable[str], content_type: str, headers: dict) -> None:
        """Stream text without holding it all: no Content-Length, the connection close ends it."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        lines, limiter, more = iter(lines), self.owner.limiter, True
        while more:
            with self.owner.limiter.turn():  # one turn per chunk: a long export yields to scrapes in between
                chunk = list(itertools.islice(lines, 512))
                data, more = "".join(chunk).encode(), len(chunk) == 512
            with limiter.charged():
                self.wfile.write(data)

    # --- routes ----------------------------------------------------------------------------------

    def route_metrics(self, query: dict) -> None:
        """Prometheus exposition as prometheus_client negotiates it (OpenMetrics, gzip, name[] filter)."""
        with self.owner.limiter.turn():
            started = time.perf_counter()
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            registry = self.monitor.registry
            if "name[]" in query:
                registry = registry.restricted_registry(query["name[]"])
            output = encoder(registry)
            headers = {}
            if gzip_accepted(self.headers.get("Accept-Encoding")):
                output = gzip.compress(output)
                headers["Content-Encoding"] = "gzip"
            self.monitor.metrics.scrape_duration.set(time.perf_counter() - started)
        self._send(200, output, content_type, headers)

    def route_healthz(self, query: dict) -> None:  # no turn: a liveness probe must answer at once
        self._send(200, b"ok\n", "text/plain; charset=utf-8")

    def route_status(self, query: dict) -> None:
        with self.owner.limiter.turn():
            status = self.monitor.status()
            if status is None:  # status() is guarded: it counted and logged its error
                raise RuntimeError("status snapshot failed")
            body = json_bytes(status)
        self._send(200, body, "application/json")

    def route_history(self, query: dict) -> None:
        """?since=ITER for the tail; ?format=columns (with ?fields=a,b) for an array per field."""
        since = _cursor(query.get("since", [None])[-1], "since")
        fields = query.get("fields", [None])[-1]
        try:
            with self.owner.limiter.turn():
                body = self.monitor.history.to_json(self.monitor.run_id, self.monitor.rank, since,
                                                    layout=query.get("format", ["points"])[-1],
                                                    names=None if fields is None else fields.split(","))
        except ValueError as e:  # a bad format or field name: the client's to fix
            raise BadRequest(str(e)) from None
        self._send(200, body, "application/json")

    def route_model(self, query: dict) -> None:
        with self.owner.limiter.turn():
            body = json_bytes(self.monitor.model())
        self._send(200, body, "application/json")

    def route_export_csv(self, query: dict) -> None:
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", self.monitor.run_id)
        self._send_lines(self.monitor.csv_lines(), "text/csv; charset=utf-8",
                         {"Content-Disposition": f'attachment; filename="nanogpt-{safe_id}.csv"'})

    def route_page(self, query: dict) -> None:
        try:
            page = importlib.import_module("exporter.page")
        except ModuleNotFoundError as e:
            if e.name != "exporter.page":
                raise
            page = None
        if page is None:
            return self._send(200, LANDING_PAGE.encode(), "text/html; charset=utf-8")
        with self.owner.limiter.turn():
            body, headers = page.render(self.monitor)  # headers: the page's CSP, nosniff
        self._send(200, body, "text/html; charset=utf-8", headers)

    def route_stream(self, query: dict) -> None:
        """Server-Sent Events: `point` events (id = iteration) and `status` events on state changes.
        Resumes after Last-Event-ID (or ?since=) with no gap and no repeat; without either,
        starts with the points logged from now on."""
        cursor = _cursor(self.headers.get("Last-Event-ID"), "Last-Event-ID")
        if cursor is None:
            cursor = _cursor(query.get("since", [None])[-1], "since")
        if cursor is None:
            last = self.monitor.history.last()
            cursor = last.iteration if last is not None else -1
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # tell reverse proxies not to buffer the stream
        self.end_headers()
        self.wfile.write(f"retry: {SSE_RETRY_MILLISECONDS}\n\n".encode())
        monitor, sent_status, limiter = self.monitor, None, self.owner.limiter
        with self.owner.track_stream():
            while not self.owner.closing.is_set():
                generation = monitor.generation  # read before the data: a change after it wakes us
                events = []
                with self.owner.limiter.turn():  # a turn per wake-up with news; an idle stream holds none
                    for point in monitor.history.since(cursor):
                        events.append(f"id: {point.iteration}\nevent: point\ndata: {point.json}\n\n")
                        cursor = point.iteration
                    if monitor.status_version != sent_status:
                        sent_status = monitor.status_version
                        events.append(f"event: status\ndata: {json_bytes(monitor.status()).decode()}\n\n")
                    data = "".join(events).encode()
                if events:
                    with limiter.charged():
                        self.wfile.write(data)
                if monitor.wait_for_change(generation, self.owner.keepalive_seconds, self.owner.closing) == generation:
                    if not self.owner.closing.is_set():
                        self.wfile.write(b": keepalive\n\n")


class _StreamTracker:
    """Counts open event streams so close() can wait for them to end."""

    def __init__(self, owner: "MetricsServer"):
        self.owner = owner

    def __enter__(self):
        with self.owner._streams_done:
            self.owner._open_streams += 1

    def __exit__(self, *exc):
        with self.owner._streams_done:
            self.owner._open_streams -= 1
            self.owner._streams_done.notify_all()


def _quiet_connection_error(server: ThreadingHTTPServer, request: Any, client_address: Any) -> None:
    """socketserver prints a traceback when a connection fails (a failed TLS handshake, a reset):
    keep the training log clean, leave a debug line."""
    log.debug("connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """The monitor's HTTP server, running in a daemon thread from construction until close()."""

    def __init__(self, monitor: "TrainingMonitor", host: str = "127.0.0.1", port: int = 0,
                 keepalive_seconds: float = KEEPALIVE_SECONDS, request_timeout: float = REQUEST_TIMEOUT_SECONDS,
                 web_config: Optional[WebConfig] = None, max_busy_ratio: float = DEFAULT_MAX_BUSY_RATIO):
        self.monitor, self.keepalive_seconds = monitor, keepalive_seconds
        web_config = web_config or WebConfig()
        self.scheme = web_config.scheme
        self.auth = BasicAuth(web_config.users) if web_config.users else None
        self.closing = threading.Event()
        # request work may take at most this share of one core: a storm of clients waits, training does not
        self.limiter = DutyLimiter(max_busy_ratio, stop=self.closing)
        self.request_timeout = request_timeout
        self._heads: dict[socket.socket, float] = {}  # connection -> monotonic deadline for its request head
        self._heads_lock = threading.Lock()
        self._streams_done = threading.Condition()
        self._open_streams = 0
        handler = type("Handler", (_Handler,), {"monitor": monitor, "owner": self, "timeout": request_timeout})
        server_class = type("Server", (ThreadingHTTPServer,), {
            "daemon_threads": True,
            # socketserver's default listen backlog is 5: a burst of clients (a page reload, several
            # scrapers) overflowed it and the kernel dropped SYNs, stalling each dropped client >= 1 s
            "request_queue_size": 128,
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "handle_error": _quiet_connection_error,
            "service_actions": lambda _: self._drop_stalled_heads(),  # serve_forever calls it every poll
        })
        try:
            self._httpd = server_class((host, int(port)), handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(f"cannot serve metrics on {host}:{port}: the port is already in use") from None
            raise ServeError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        if web_config.ssl_context is not None:
            # the handshake happens on first read, in the connection's own thread under its timeout,
            # so a client that never completes it cannot block accept() for everyone else
            self._httpd.socket = web_config.ssl_context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"nanogpt-metrics-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8000 or https://... (append /metrics, /api/status, ...)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def head_started(self, connection: socket.socket) -> None:
        with self._heads_lock:
            self._heads[connection] = time.monotonic() + self.request_timeout

    def head_done(self, connection: socket.socket) -> None:
        with self._heads_lock:
            self._heads.pop(connection, None)

    def _drop_stalled_heads(self) -> None:
        """Shut down connections still sending their request line and headers `request_timeout` s
        after they opened: the per-read socket timeout alone never trips for a client that trickles
        a byte a second, and each such client would hold a thread for as long as it liked."""
        now = time.monotonic()
        with self._heads_lock:
            stalled = [c for c, deadline in self._heads.items() if deadline < now]
            for connection in stalled:
                del self._heads[connection]
        for connection in stalled:
            try:  # the plain socket's shutdown, also under TLS: the handler's blocked read returns EOF
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def track_stream(self) -> _StreamTracker:
        return _StreamTracker(self)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open event streams (waiting up to `timeout` s), release the port."""
        if self.closing.is_set():
            return
        self.closing.set()
        self.limiter.wake()
        self.monitor.wake_waiters()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._streams_done:
            self._streams_done.wait_for(lambda: self._open_streams == 0, timeout=timeout)
        self._thread.join(timeout=timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
