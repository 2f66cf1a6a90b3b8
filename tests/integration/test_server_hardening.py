"""The monitor process's server under hostile or broken clients: bad bytes, oversized requests,
traversal, wrong methods, bad queries, slow and stuck clients, floods, disconnects, shutdown with
open answers, security headers; and the trainer, which serves nothing itself.

Every request here goes over a raw socket to the real monitor process on 127.0.0.1, so what is
checked is the bytes a client really gets back; what the monitor holds (descriptors, connections)
is read from its /proc.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.request

import pytest

from nanogpt.config import TrainConfig
from tests.support.procs import wait_until
from tests.support.raw_http import ROUTES, Response, exchange, parse_response
from tests.support.served import (MonitorCli, allow_open_files, established, exporter_errors, listening_ports,
                                  log_points, open_fds, rss_kb, started, threads)


def request(server, data: bytes, timeout: float = 5.0) -> Response:
    return parse_response(exchange(server.host, server.port, data, timeout), head_request=data.startswith(b"HEAD "))


def get(server, target: str, headers: str = "", method: str = "GET") -> Response:
    return request(server, f"{method} {target} HTTP/1.0\r\n{headers}\r\n".encode("latin-1"))


def metrics_within(url: str, seconds: float) -> int:
    """The status of one /metrics request that must be answered within `seconds` (else it raises)."""
    with urllib.request.urlopen(url + "/metrics", timeout=seconds) as r:
        r.read()
        return r.status


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One served run for the tests that only ask (none of them records anything)."""
    monitor = started(tmp_path_factory.mktemp("shared") / "run", points=5)
    yield monitor
    monitor.close()


@pytest.fixture
def server(shared):
    return shared.server


@pytest.fixture
def monitor(tmp_path):
    """A served run of its own, for the tests that record or measure."""
    monitor = started(tmp_path / "run", points=5)
    yield monitor
    monitor.close()


# --- bad bytes, oversized requests --------------------------------------------------------------

GARBAGE = [
    b"\x00\xff\xfe\x80garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/1.x\r\n\r\n", b"GET / HTTP/1.0 extra\r\n\r\n",
    b"GET / FTP/1.0\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nContent-Length: -5\r\n\r\n", b"GET /metrics HTTP/1.0\r\nBad Header\r\n\r\n",
]


@pytest.mark.parametrize("data", GARBAGE)
def test_a_request_that_cannot_be_parsed_gets_a_400_and_a_closed_connection(server, data):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):  # to the end: the server closes after its answer
            raw += chunk
    assert parse_response(raw).status == 400


@pytest.mark.parametrize("version, status", [("HTTP/2.0", 505), ("HTTP/0.9", 505), ("", 505), ("HTTP/9.9", 400)])
def test_a_request_in_another_http_version_than_1_x_is_refused(server, version, status):
    answer = request(server, f"GET /healthz {version}".rstrip().encode() + b"\r\n\r\n")
    assert answer.status == status and answer.body != b"ok\n"


def test_a_header_line_over_8190_bytes_is_a_400(server):
    assert get(server, "/healthz", "X-Big: " + "a" * 9000 + "\r\n").status == 400


def test_a_header_line_within_the_limit_is_served(server):
    assert get(server, "/healthz", "X-Big: " + "a" * 8000 + "\r\n").status == 200


def test_more_than_100_headers_is_a_400(server):
    assert get(server, "/healthz", "".join(f"X-{i}: v\r\n" for i in range(101))).status == 400


def test_100_headers_are_served(server):
    assert get(server, "/healthz", "".join(f"X-{i}: v\r\n" for i in range(100))).status == 200


def test_a_request_line_over_8190_bytes_is_a_400(server):
    assert get(server, "/" + "a" * 9000).status == 400


def test_a_long_url_within_the_limit_is_an_ordinary_404(server):
    assert get(server, "/" + "a/" * 4000).status == 404


def test_the_server_serves_on_after_bad_and_oversized_requests(server):
    for data in GARBAGE + [b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n"]:
        request(server, data)
    assert get(server, "/metrics").status == 200 and exporter_errors(server.url) == 0


# --- traversal, methods, queries ------------------------------------------------------------------

TRAVERSALS = [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd",
    "/%252e%252e/%252e%252e/etc/passwd", "/..\\..\\..\\etc\\passwd", "/static/../../pyproject.toml",
    "/static/index.html", "/exporter/static/index.html", "/index.html", "/exporter/page.py", "//etc/passwd",
    "/api/../../../etc/passwd", "/metrics/../../pyproject.toml", "/%2e%2e%5c%2e%2e%5cpyproject.toml",
    "http://127.0.0.1/../../etc/passwd", "/etc/passwd%00.html", "/.git/config", "/%c0%ae%c0%ae/etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_path_traversal_is_404_and_serves_no_file(server, target):
    answer = get(server, target)
    assert answer.status == 404
    for secret in (b"root:", b"[project]", b"<script", b"[core]", b"import "):
        assert secret not in answer.body


def test_an_absolute_file_uri_is_refused_and_serves_no_file(server):
    answer = get(server, "file:///etc/passwd")
    assert 400 <= answer.status < 500 and b"root:" not in answer.body


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_every_method_but_get_is_405_with_allow_on_every_route(server, method):
    for route in ROUTES:
        answer = request(server, f"{method} {route} HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".encode())
        assert (answer.status, answer.headers.get("allow")) == (405, "GET"), route


@pytest.mark.parametrize("method", ["BREW", "G\x00T", "get"])
def test_a_method_http_does_not_know_is_refused(server, method):
    assert get(server, "/metrics", method=method).status == 400  # the parser's word: no route is reached


def test_a_post_with_a_large_body_still_gets_its_405(server):
    answer = request(server, b"POST /metrics HTTP/1.0\r\nContent-Length: 200000\r\n\r\n" + b"x" * 200_000)
    assert answer.status == 405


BAD_SINCE = ["-1", "abc", "1e999", "1.5", "0x10", "9" * 19, "9" * 4000, "%D9%A1", "%2B1", "1%00", "inf", "NaN"]


@pytest.mark.parametrize("value", BAD_SINCE)
@pytest.mark.parametrize("route", ["/api/history", "/api/stream"])
def test_a_bad_since_is_a_400_json_error(server, route, value):
    answer = get(server, f"{route}?since={value}")
    assert answer.status == 400 and answer.headers["content-type"] == "application/json"
    assert b"since" in answer.body


def test_a_repeated_since_counts_the_last_value(server):
    assert get(server, "/api/history?since=1&since=abc").status == 400
    assert b'"iteration":4' not in get(server, "/api/history?since=abc&since=4").body


@pytest.mark.parametrize("value", ["abc", "-1", "1e999", "9" * 19])
def test_a_bad_last_event_id_is_a_400(server, value):
    assert get(server, "/api/stream", f"Last-Event-ID: {value}\r\n").status == 400


def test_training_is_recorded_and_served_in_full_while_bad_requests_arrive(monitor):
    server = monitor.server

    def hammer():
        for target in TRAVERSALS + [f"/api/history?since={v}" for v in BAD_SINCE]:
            get(server, target)
            request(server, b"\x00\xff garbage\r\n\r\n")

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for client in clients:
        client.start()
    log_points(monitor, 6, 505)
    for client in clients:
        client.join(timeout=60)
    history = get(server, "/api/history").body
    assert len(re.findall(rb'"iteration":', history)) == 505
    assert b'"iteration":505' in get(server, "/api/status").body and exporter_errors(server.url) == 0


# --- security headers, no state change, defaults -----------------------------------------------------

def test_the_page_sends_a_strict_content_security_policy_and_nosniff(server):
    answer = get(server, "/")
    policy = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["object-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and "'unsafe-inline'" not in policy["script-src"]
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("target, method", [
    *[(route, "GET") for route in ROUTES], *[(route, "HEAD") for route in ROUTES], ("/nope", "GET"),
    ("/metrics", "POST"), ("/api/history?since=x", "GET"), ("/api/status?rank=9", "GET"),
])  # fmt: skip
def test_every_answer_of_the_routes_says_nosniff_errors_included(server, target, method):
    assert get(server, target, method=method).headers["x-content-type-options"] == "nosniff"


def test_no_request_changes_what_is_served(server):
    def snapshot():
        status = re.sub(rb'"(elapsed_seconds|eta_seconds|iterations_per_second)":[^,}]*', b"",
                        get(server, "/api/status").body)
        metrics = [line for line in get(server, "/metrics").body.splitlines()
                   if not line.startswith((b"process_", b"python_", b"nanogpt_exporter_scrape", b"#"))]
        return status, metrics, get(server, "/api/history").body, get(server, "/export.csv").body

    before = snapshot()
    for route in ROUTES:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            get(server, route + "?since=0&reset=1&state=failed", "Content-Length: 0\r\n", method)
    assert snapshot() == before


def test_the_monitor_and_the_trainer_bind_loopback_by_default(tmp_path):
    monitor = started(tmp_path / "run")
    try:
        assert monitor.server.host == "127.0.0.1"
        local = [line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == monitor.server.port]
        assert local == [f"0100007F:{monitor.server.port:04X}"]  # 127.0.0.1, little-endian as /proc writes it
    finally:
        monitor.close()
    assert TrainConfig().metrics_host == "127.0.0.1"


# --- slow clients, floods ---------------------------------------------------------------------------

def test_metrics_answers_within_2_s_while_1000_clients_trickle_their_headers(tmp_path):
    allow_open_files(4096)  # before serve(): the monitor process inherits the limit
    monitor = started(tmp_path / "run", points=5)
    slow = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", monitor.server.port), timeout=10)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the end of the head
            slow.append(sock)
        for _ in range(3):
            for sock in slow:
                sock.sendall(b"a")
            assert metrics_within(monitor.server.url, 2.0) == 200
    finally:
        for sock in slow:
            sock.close()
        monitor.close()


@pytest.fixture
def short_idle(tmp_path):
    """A monitor process that closes a connection after 1 s without a whole request."""
    with MonitorCli(tmp_path / "run", "--idle-timeout", "1") as cli:
        yield cli


def test_a_client_trickling_its_request_head_is_dropped_at_the_idle_timeout(short_idle):
    with socket.create_connection(("127.0.0.1", short_idle.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.2)  # the client's pace: a byte every 0.2 s, which no per-read timeout catches
        started_at, closed = time.monotonic(), False
        while not closed and time.monotonic() - started_at < 10:
            try:
                sock.sendall(b"a")
                closed = sock.recv(1) == b""
            except socket.timeout:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, "a client still sending its head after 10 s is still connected"


def test_an_idle_kept_alive_connection_is_closed_at_the_idle_timeout(short_idle):
    with socket.create_connection(("127.0.0.1", short_idle.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok\n"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" not in answer.lower()
        assert sock.recv(65536) == b""  # within the socket's 10 s: closed by the server, idle


def test_metrics_answers_within_2_s_while_clients_flood_every_route(monitor):
    log_points(monitor, 6, 2000)  # a CSV and a history worth making
    server, stop = monitor.server, threading.Event()

    def flood():
        while not stop.is_set():
            for route in ("/", "/api/status", "/api/history", "/export.csv", "/api/model", "/nope"):
                try:
                    exchange(server.host, server.port, f"GET {route} HTTP/1.0\r\n\r\n".encode())
                except OSError:
                    pass  # refused while the backlog is full: a flood's lot

    clients = [threading.Thread(target=flood, daemon=True) for _ in range(16)]
    for client in clients:
        client.start()
    try:
        for _ in range(5):
            assert metrics_within(server.url, 2.0) == 200
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)


# --- clients leaving mid-answer -----------------------------------------------------------------------

def leave_mid_answer(server, target: str, clients: int, batch: int = 50) -> None:
    """`clients` connections in batches held open together: each asks for `target`, reads the first
    bytes of the answer and closes with the rest unread (small receive buffer: the server is mid-write)."""
    for _ in range(clients // batch):
        socks = []
        for _ in range(batch):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect((server.host, server.port))
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            socks.append(sock)
        for sock in socks:
            assert sock.recv(512).startswith(b"HTTP/1.1 200")
            sock.close()


@pytest.mark.parametrize("target, clients", [("/api/stream", 1000), ("/export.csv", 200)])
def test_clients_leaving_mid_answer_leave_nothing_open_in_the_monitor(monitor, capfd, target, clients):
    log_points(monitor, 6, 5000)  # a CSV larger than the socket buffers of a small-window client hold
    server = monitor.server
    # warm-up at the measured concurrency: lazily opened files, allocator pools and caches at their
    # high-water mark, so that what follows measures what the clients leave behind
    leave_mid_answer(server, target, clients)
    wait_until(lambda: established(server.pid) == 0, timeout=20, what="the warm-up's connections to close")
    fds, rss = open_fds(server.pid), rss_kb(server.pid)
    rounds = 3
    for _ in range(rounds):
        leave_mid_answer(server, target, clients)
        wait_until(lambda: open_fds(server.pid) <= fds + 2, timeout=10,
                   what=f"the monitor's descriptors back to {fds} (+2)")
    # RSS moves by a few MB either way from one round to the next (allocator arenas); what a leak
    # leaves grows with every client. 8 MB over all rounds is ~13 kB a CSV client, ~3 kB a stream's
    # (a handler outliving its client, an idle stream's until its next keepalive 15 s on, holds ~10 kB).
    assert rss_kb(server.pid) - rss < 8_000, f"the monitor's RSS grew by 8 MB or more over {rounds} rounds"
    assert get(server, "/healthz").status == 200 and exporter_errors(server.url) == 0
    assert "Traceback" not in capfd.readouterr().err  # a client leaving is no error of the server's


# --- shutdown -------------------------------------------------------------------------------------------

def test_close_with_open_streams_returns_promptly_and_ends_them(monitor):
    streams = [socket.create_connection((monitor.server.host, monitor.server.port), timeout=5) for _ in range(5)]
    for sock in streams:
        sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock in streams:  # each stream is open and idle once its first status event arrived
        received = b""
        while b"event: status" not in received:
            received += sock.recv(65536)
    started_at = time.monotonic()
    monitor.close()
    assert time.monotonic() - started_at < 3 and monitor.server.process.returncode == 0
    for sock in streams:
        received = b""
        while chunk := sock.recv(65536):  # what was sent before the close, then EOF
            received += chunk
        assert received.endswith(b"0\r\n\r\n")  # the last chunk: the stream was ended, not cut off
        sock.close()


def test_close_with_a_stuck_download_still_exits_cleanly(monitor):
    for i in range(6, 50_000):  # ~5 MB of CSV: more than the kernel buffers (4 MB on loopback here) take
        monitor.log(iteration=i, loss=3.0, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((monitor.server.host, monitor.server.port))
    try:
        stuck.sendall(b"GET /export.csv HTTP/1.0\r\n\r\n")
        assert stuck.recv(64).startswith(b"HTTP/1.0 200")
        started_at = time.monotonic()
        monitor.close()
        # exit code 0: it finished by itself (close() would have SIGKILLed it after 5 s)
        assert monitor.server.process.returncode == 0 and time.monotonic() - started_at < 5
        assert not (monitor.directory / "monitor.json").exists()  # and cleaned up on the way out
    finally:
        stuck.close()


# --- the trainer serves nothing --------------------------------------------------------------------------

def test_serve_leaves_the_trainer_with_no_listening_socket(tmp_path):
    before = listening_ports()
    monitor = started(tmp_path / "run", points=3)
    try:
        get(monitor.server, "/metrics")
        assert listening_ports() == before
        assert listening_ports(monitor.server.pid) == {monitor.server.port}  # the check does see a listener
    finally:
        monitor.close()


def test_serving_and_answering_start_no_thread_in_the_trainer(tmp_path):
    before = threads(), threading.active_count()
    monitor = started(tmp_path / "run", points=3)
    try:
        for route in ROUTES:
            get(monitor.server, route, method="HEAD" if route == "/api/stream" else "GET")  # HEAD: a 405, at once
        log_points(monitor, 4, 10)
        assert (threads(), threading.active_count()) == before
    finally:
        monitor.close()


def test_the_monitor_process_runs_at_a_lower_priority_than_the_trainer(monitor):
    ours, its = os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, monitor.server.pid)
    assert its == min(ours + 10, 19)
