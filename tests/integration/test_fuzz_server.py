"""The monitor process's server against arbitrary requests (hypothesis): whatever a client sends over
a raw socket, the answer is well-formed HTTP with a status below 500 (505 for an HTTP version it
does not speak), or none at all while the request is not complete yet; the monitor records no
internal error, and it keeps serving."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.raw_http import ROUTES, exchange, parse_response
from tests.support.served import exporter_errors, started

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get", "G\x00T", "*"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=8)
PATHS = st.sampled_from(ROUTES + ["/api/history", "/..", "//", "*", "/%2e%2e/", "http://x/metrics"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=60)
QUERY_VALUES = st.sampled_from(["", "-1", "abc", "1e999", "9" * 30, "%00", "%ff", "%", "0", "3"]) | st.text(
    st.characters(min_codepoint=33, max_codepoint=255, exclude_characters="#"), max_size=20)
QUERIES = st.lists(st.tuples(st.sampled_from(["since", "until", "points", "rank", "format", "name[]", "x", ""]),
                             QUERY_VALUES), max_size=4).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
VERSIONS = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/0.9", "HTTP/2.0", "HTTP/1", "HTTP/x.y", "", "http/1.0"])
HEADER_NAMES = st.sampled_from([
    "Accept", "Accept-Encoding", "Last-Event-ID", "Authorization", "Content-Length", "Connection", "Expect", "Host",
    "Range", "Transfer-Encoding", "Upgrade"]) | st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True)
HEADER_VALUES = st.sampled_from([
    "gzip", "application/openmetrics-text; version=1.0.0", "text/plain;q=0", "-5", "100-continue", "chunked",
    "*/*;q=abc", "bytes=0-1", "close", "websocket"]) | st.text(st.characters(min_codepoint=32, max_codepoint=255),
                                                               max_size=40)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    monitor = started(tmp_path_factory.mktemp("fuzz") / "run", run_id="fuzz")
    for i in range(1, 11):
        monitor.log(iteration=i, loss=float("nan") if i == 5 else 4.0 / i, lr=1e-3)
    yield monitor.server
    monitor.close()


def assert_fine(server, data: bytes) -> None:
    """A whole, well-formed answer below 500 (or 505), or none (the server waits for the rest)."""
    raw = exchange(server.host, server.port, data, timeout=2.0)
    if raw:
        # aiohttp answers a request it could not parse (a HEAD without Host, say) "HTTP/1.0 400" with a
        # body and closes: it cannot know the request was a HEAD, and the close ends the body anyway
        unparsed = raw.startswith(b"HTTP/1.0 400 ") and not raw.endswith(b"\r\n\r\n")
        response = parse_response(raw, head_request=data.startswith(b"HEAD ") and not unparsed)
        assert response.status < 500 or response.status == 505, response
    assert exporter_errors(server.url, run_id="fuzz") == 0  # the request raised nothing in the monitor


@FUZZ
@given(method=METHODS, path=PATHS, query=QUERIES, version=VERSIONS, headers=HEADERS)
def test_any_request_gets_a_well_formed_answer_below_500(server, method, path, query, version, headers):
    target = f"{path}?{query}" if query else path
    head = " ".join(part for part in (method, target, version) if part) + "\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    assert_fine(server, head.encode("latin-1"))


@FUZZ
@given(data=st.binary(min_size=1, max_size=2000))
def test_arbitrary_bytes_get_a_well_formed_answer_below_500(server, data):
    assert_fine(server, data)


def test_the_server_still_serves_and_recorded_no_error_after_the_fuzzing(server):
    for route in ("/healthz", "/metrics", "/api/status", "/api/history"):
        answer = exchange(server.host, server.port, f"GET {route} HTTP/1.0\r\n\r\n".encode())
        assert parse_response(answer).status == 200
    assert exporter_errors(server.url, run_id="fuzz") == 0
