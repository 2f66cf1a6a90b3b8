"""The one HTTP server of the training process: /metrics, health, JSON, SSE, CSV and the page.

A stdlib ThreadingHTTPServer in a daemon thread: one daemon thread per
connection (kept alive between requests: exporter.routes), a socket timeout on
every connection (a slow or stuck client gets dropped and never blocks /metrics
or training), a deadline for each request's head, an idle limit on kept-alive
connections, and `close()` that stops the listener and ends every open connection,
event streams included.
Request work takes turns under a duty-cycle limit (exporter.limiter, `max_busy_ratio`,
default 0.03 of one core), so a storm of clients waits instead of slowing training;
/healthz is exempt. The bodies are made once per change (exporter.views), so most
answers cost little more than reading the request and writing the bytes.

Basic auth and TLS, when a web config is given (exporter.webconfig), cover
every route. Deliberately not here: the routes and how each request is answered
(exporter.routes, exporter.stream), making the bodies (exporter.views), metric
definitions (exporter.metrics), the page's HTML (exporter.page).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Optional

from .limiter import DEFAULT_MAX_BUSY_RATIO, DutyLimiter
from .routes import IDLE_SECONDS, REQUEST_TIMEOUT_SECONDS, Handler
from .views import MAX_AGE_SECONDS, Views
from .webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0  # SSE comment interval, so proxies keep an idle stream open


class ServeError(OSError):
    """The server could not start; the message is one sentence."""


class PortInUseError(ServeError):
    """The host:port to serve on is taken by another process."""


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


def _shut_down(connections: list[socket.socket]) -> None:
    """Shut connections down: a handler's blocked read returns EOF and its thread ends."""
    for connection in connections:
        try:  # the plain socket's shutdown, also under TLS
            socket.socket.shutdown(connection, socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


def _quiet_connection_error(server: ThreadingHTTPServer, request: Any, client_address: Any) -> None:
    """socketserver prints a traceback when a connection fails (a failed TLS handshake, a reset):
    keep the training log clean, leave a debug line."""
    log.debug("connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """The monitor's HTTP server, running in a daemon thread from construction until close().

    `monitor` is the exporter.monitor.TrainingMonitor to serve (that module imports this one;
    TrainingMonitor.serve() is the usual way to make a MetricsServer)."""

    def __init__(self, monitor: Any, host: str = "127.0.0.1", port: int = 0,
                 keepalive_seconds: float = KEEPALIVE_SECONDS, request_timeout: float = REQUEST_TIMEOUT_SECONDS,
                 web_config: Optional[WebConfig] = None, max_busy_ratio: float = DEFAULT_MAX_BUSY_RATIO,
                 max_age: float = MAX_AGE_SECONDS, idle_seconds: float = IDLE_SECONDS,
                 poll_interval: float = 0.1):
        """`idle_seconds`: how long a kept-alive connection may wait for its next request.
        `poll_interval`: seconds between the listener's wake-ups (to notice close() and drop stalled
        request heads); each costs a little CPU, which adds up only where one process hosts many servers."""
        self.monitor, self.keepalive_seconds, self.idle_seconds = monitor, keepalive_seconds, idle_seconds
        self.views = Views(monitor, max_age)  # the bodies, made once per change (see exporter.views)
        web_config = web_config or WebConfig()
        self.scheme = web_config.scheme
        self.auth = BasicAuth(web_config.users) if web_config.users else None
        self.closing = threading.Event()
        # request work may take at most this share of one core: a storm of clients waits, training does not
        # paced while the run trains: with no training to protect, an export may take what it needs
        self.limiter = DutyLimiter(max_busy_ratio, stop=self.closing, paced=lambda: monitor.running)
        self.request_timeout = request_timeout
        self._heads: dict[socket.socket, float] = {}  # connection -> monotonic deadline for its request head
        self._connections: set[socket.socket] = set()  # open ones, kept-alive included: close() ends them
        self._heads_lock = threading.Lock()
        self._streams_done = threading.Condition()
        self._open_streams = 0
        handler = type("Handler", (Handler,), {"monitor": monitor, "owner": self, "timeout": request_timeout})
        server_class = type("Server", (ThreadingHTTPServer,), {
            "daemon_threads": True,
            # socketserver's default listen backlog is 5: a burst of clients (a page reload, several
            # scrapers) overflowed it and the kernel dropped SYNs, stalling each dropped client >= 1 s
            "request_queue_size": 128,
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "handle_error": _quiet_connection_error,
            "service_actions": lambda _: self._drop_stalled_heads(),  # serve_forever calls it every poll
            "process_request": lambda httpd, request, address: self._start_request(httpd, request, address),
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
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=f"nanogpt-metrics-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8000 or https://... (append /metrics, /api/status, ...)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _start_request(self, httpd: ThreadingHTTPServer, request: Any, client_address: Any) -> None:
        """Start the request's thread, charging the limiter for it (the accepting thread's work)."""
        started = time.thread_time()
        ThreadingHTTPServer.process_request(httpd, request, client_address)
        self.limiter.charge(time.thread_time() - started)

    def head_started(self, connection: socket.socket) -> None:
        with self._heads_lock:
            self._heads[connection] = time.monotonic() + self.request_timeout
            self._connections.add(connection)

    def head_done(self, connection: socket.socket, closed: bool = False) -> None:
        with self._heads_lock:
            self._heads.pop(connection, None)
            if closed:
                self._connections.discard(connection)

    def _drop_stalled_heads(self) -> None:
        """Shut down connections still sending their request line and headers `request_timeout` s
        after they opened: the per-read socket timeout alone never trips for a client that trickles
        a byte a second, and each such client would hold a thread for as long as it liked."""
        now = time.monotonic()
        with self._heads_lock:
            stalled = [c for c, deadline in self._heads.items() if deadline < now]
            for connection in stalled:
                del self._heads[connection]
        _shut_down(stalled)

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
        with self._heads_lock:  # kept-alive connections would otherwise go on answering for the old run
            open_connections = list(self._connections)
        _shut_down(open_connections)
        with self._streams_done:
            self._streams_done.wait_for(lambda: self._open_streams == 0, timeout=timeout)
        self._thread.join(timeout=timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
