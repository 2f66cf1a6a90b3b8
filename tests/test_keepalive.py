"""exporter.routes over kept-alive connections (HTTP/1.1, as Prometheus and browsers use them):
several answers on one connection, and the answers that close it."""

from __future__ import annotations

import socket
import time

import pytest

from exporter import TrainingMonitor

REQUEST_TIMEOUT = 1.0
IDLE = 2.0


@pytest.fixture
def server():
    monitor = TrainingMonitor(run_id="ka", rank=0)
    monitor.run_started(max_iterations=100)
    monitor.log(iteration=1, loss=2.0)
    server = monitor.serve(host="127.0.0.1", port=0, keepalive_seconds=0.2, request_timeout=REQUEST_TIMEOUT,
                           idle_seconds=IDLE)
    yield server
    server.close()


def read_answer(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """(status line, lower-case headers, body) of one answer with a Content-Length."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.strip().decode() for k, _, v in (line.partition(b":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def closed_by_server(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_connection_carries_scrape_after_scrape(server):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        for path in ("/metrics", "/metrics", "/api/status", "/healthz"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, body = read_answer(sock)
            assert status.startswith(b"HTTP/1.1 200") and headers.get("connection") != "close" and body


@pytest.mark.parametrize("headers", ["", "Connection: keep-alive\r\n"])
def test_an_http_1_0_request_still_gets_its_answer_and_a_close(server, headers):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"GET /healthz HTTP/1.0\r\n{headers}\r\n".encode())
        assert read_answer(sock)[2] == b"ok\n" and closed_by_server(sock, timeout=REQUEST_TIMEOUT / 2)


@pytest.mark.parametrize("request_bytes", [
    b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",  # an error
    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",  # another method, a body
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",  # a GET with an unread body
])
def test_an_error_or_a_request_with_a_body_closes_the_connection(server, request_bytes):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        _, headers, _ = read_answer(sock)
        assert headers["connection"] == "close" and closed_by_server(sock)


@pytest.mark.parametrize("path", ["/api/stream", "/export.csv"])
def test_answers_without_a_length_end_by_closing(server, path):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert b"\r\nConnection: close\r\n" in head and b"Content-Length" not in head


def test_a_kept_connection_may_wait_longer_than_the_request_timeout_for_its_next_request(server):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answer(sock)
        time.sleep(REQUEST_TIMEOUT * 1.5)  # idle: no head has started, so no head deadline runs
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[2] == b"ok\n"


def test_an_idle_kept_connection_is_closed_after_the_idle_time(server):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answer(sock)
        started = time.monotonic()
        assert closed_by_server(sock, timeout=IDLE + 3)
        assert IDLE * 0.9 <= time.monotonic() - started < IDLE + 2


def test_a_next_request_trickling_in_still_meets_the_head_deadline(server):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answer(sock)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")  # and never the rest
        started = time.monotonic()
        assert closed_by_server(sock, timeout=REQUEST_TIMEOUT + 3)
        assert time.monotonic() - started < REQUEST_TIMEOUT + 1


def test_a_closed_server_answers_nothing_more_on_a_kept_connection(server):
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answer(sock)
        server.close()
        try:
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # closed already
        assert closed_by_server(sock, timeout=REQUEST_TIMEOUT / 2)
