"""exporter.server against arbitrary requests (hypothesis): whatever a client sends over a raw socket,
the answer is well-formed HTTP with a status below 500 (505 for an HTTP version it does not speak),
the server records no internal error, and it keeps serving."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import TrainingMonitor
from tests.support.raw_http import MODEL, ROUTES, exchange, parse_response

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "G\x00T", "*"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=8)
PATHS = st.sampled_from(ROUTES + ["/api/history", "/..", "//", "*", "/%2e%2e/", "http://x/metrics"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=60)
QUERY_VALUES = st.sampled_from(["", "-1", "abc", "1e999", "9" * 30, "%00", "%ff", "%", "0", "3"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255, exclude_characters="#"), max_size=20)
QUERIES = st.lists(st.tuples(st.sampled_from(["since", "name[]", "x", ""]), QUERY_VALUES), max_size=4).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
VERSIONS = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/0.9", "HTTP/2.0", "HTTP/1", "HTTP/x.y", "", "http/1.0"])
HEADER_NAMES = st.sampled_from(["Accept", "Accept-Encoding", "Last-Event-ID", "Authorization", "Content-Length",
                                "Connection", "Expect", "Host", "Range", "Transfer-Encoding"]) | st.from_regex(
    r"[A-Za-z0-9-]{1,20}", fullmatch=True)
HEADER_VALUES = st.sampled_from(["gzip", "application/openmetrics-text; version=1.0.0", "text/plain;q=0",
                                 "-5", "100-continue", "chunked", "*/*;q=abc", "bytes=0-1"]) | st.text(
    st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5)


@pytest.fixture(scope="module")
def served():
    monitor = TrainingMonitor(run_id="fuzz", rank=0)
    monitor.run_started(max_iterations=100, model_config=MODEL, parameters={"total": 1}, start_time=time.time())
    for i in range(1, 11):
        monitor.log(iteration=i, loss=float("nan") if i == 5 else 4.0 / i, lr=1e-3)
    server = monitor.serve(host="127.0.0.1", port=0, keepalive_seconds=0.2, request_timeout=2.0)
    yield monitor, server
    server.close()


def answer_of(server, data: bytes):
    return parse_response(exchange(server.host, server.port, data), head_request=data.startswith(b"HEAD "))


def assert_fine(monitor, response) -> None:
    assert response.status < 500 or response.status == 505, response
    assert errors_of(monitor) == 0


def errors_of(monitor) -> float:
    return monitor.registry.get_sample_value("nanogpt_exporter_errors_total", {"run_id": "fuzz", "rank": "0"})


@FUZZ
@given(method=METHODS, path=PATHS, query=QUERIES, version=VERSIONS, headers=HEADERS)
def test_any_request_gets_a_well_formed_answer_below_500(served, method, path, query, version, headers):
    monitor, server = served
    target = f"{path}?{query}" if query else path
    head = " ".join(part for part in (method, target, version) if part) + "\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    assert_fine(monitor, answer_of(server, head.encode("latin-1")))


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000))  # only a client that sends nothing gets no answer
def test_arbitrary_bytes_get_a_well_formed_answer_below_500(served, data):
    monitor, server = served
    assert_fine(monitor, answer_of(server, data))


def test_the_server_still_serves_after_the_fuzzing(served):
    monitor, server = served
    for route in ("/healthz", "/metrics", "/api/status", "/api/history"):
        assert answer_of(server, f"GET {route} HTTP/1.0\r\n\r\n".encode()).status == 200
    assert errors_of(monitor) == 0
