"""The monitor process's HTTP server (exporter.app) over a socket: what only the wire shows (HEAD
framing, keep-alive, event streams, shutdown, ports in use), against the process TrainingMonitor.serve()
starts on loopback. What each route answers is tests/unit/test_server.py, called as functions."""

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from exporter import PortInUseError
from tests.support.procs import REPO, free_port, require, wait_until
from tests.support.raw_http import ROUTES, parse_response
from tests.support.recorded import scraped_value
from tests.support.served import MonitorCli, recording, sample


@pytest.fixture
def monitor(tmp_path):
    monitor = recording(tmp_path / "run")
    yield monitor
    monitor.close()


@pytest.fixture
def server(monitor):
    return monitor.serve(host="127.0.0.1", port=0)


def train(monitor, iterations, start=1):
    for i in range(start, start + iterations):
        monitor.iteration(iteration=i, tokens=256, timestamp=time.time())
        monitor.log(iteration=i, loss=4.0 - 0.01 * i, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0)


def get(server, path, headers=None, method="GET"):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(server.url + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw(server, target, method="GET"):
    """One HTTP/1.0 exchange read to the server's close (an HTTP/1.0 answer ends the connection), so
    nothing sent after the answer's head goes unseen."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"{method} {target} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_response(data, head_request=method == "HEAD")


# --- answers on the wire ---------------------------------------------------------------------------------------

def test_promtool_accepts_a_scrape_of_metrics(server, monitor):
    promtool = require("promtool")
    train(monitor, 5)
    monitor.evaluated(iteration=5, train_loss=3.9, val_loss=3.95)
    result = subprocess.run([promtool, "check", "metrics"], input=get(server, "/metrics")[2],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize("route", ROUTES)
def test_head_is_405_without_a_body_on_every_route(server, route):
    head = raw(server, route, "HEAD")  # parse_response fails on any body after a HEAD's headers
    assert (head.status, head.headers["allow"]) == (405, "GET")


def test_a_regular_scraper_sees_every_figure_recorded_before_its_body_could_be_rendered_ahead(server, monitor):
    """Scrapes 0.3 s apart on one connection (as Prometheus keeps one): from the third on, each body
    is rendered ahead (exporter.scrapeahead), at most 0.15 s before the scrape; what was recorded
    0.3 s before each scrape is in it."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        seen = []
        for i in range(1, 7):
            monitor.iteration(iteration=i, tokens=256, timestamp=time.time())
            time.sleep(0.3)
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            body = gzip.decompress(response.read()).decode()
            seen.append(scraped_value(body, "nanogpt_iteration", rank="0", run_id="r1"))
        assert seen == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    finally:
        conn.close()


def test_a_kept_alive_connection_serves_one_request_after_another(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        sockets, answers = [], []
        for path in ("/metrics", "/api/status", "/metrics"):
            conn.request("GET", path)
            response = conn.getresponse()
            answers.append((response.status, len(response.read()) > 0))
            sockets.append(conn.sock)  # http.client drops its socket when the server closes the connection
        assert answers == [(200, True)] * 3
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3
    finally:
        conn.close()


# --- event streams --------------------------------------------------------------------------------

class Stream:
    """A raw SSE client: read events as dicts {id, event, data} or ':' comments."""

    def __init__(self, url_or_server, path="/api/stream", headers=None):
        port = url_or_server.port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self):
        event = {}
        while True:
            line = self.response.readline().decode()  # de-chunked (HTTP/1.1)
            if line == "":
                return None  # the server ended the stream
            line = line.rstrip("\r\n")
            if line == "":
                if event:
                    return event
                continue
            field, _, text = line.partition(":")
            event[field or ":"] = text.strip()

    def next_point(self):
        while True:
            event = self.next()
            if event is None or event.get("event") == "point":
                return event

    def close(self):
        self.conn.close()


def test_stream_sends_retry_then_status_then_each_new_point(server, monitor):
    stream = Stream(server)
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    assert stream.next() == {"retry": "2000"}
    assert stream.next()["event"] == "status"
    train(monitor, 3)
    points = [stream.next_point() for _ in range(3)]
    assert [p["id"] for p in points] == ["1", "2", "3"]
    assert json.loads(points[2]["data"])["iteration"] == 3
    stream.close()


def test_stream_resumes_after_last_event_id_without_gaps_or_repeats(server, monitor):
    train(monitor, 10)
    stream = Stream(server, headers={"Last-Event-ID": "6"})
    assert [stream.next_point()["id"] for _ in range(4)] == ["7", "8", "9", "10"]
    train(monitor, 1, start=11)
    assert stream.next_point()["id"] == "11"
    stream.close()


def test_stream_since_works_like_last_event_id(server, monitor):
    train(monitor, 3)
    stream = Stream(server, path="/api/stream?since=1")
    assert stream.next_point()["id"] == "2"
    stream.close()


def test_a_reconnect_resumes_after_its_last_event_id_not_the_since_it_first_asked(server, monitor):
    # an EventSource reconnects to the same URL (?since= and all) with the id of the last event it got
    train(monitor, 5)
    stream = Stream(server, path="/api/stream?since=1", headers={"Last-Event-ID": "4"})
    assert stream.next_point()["id"] == "5"
    stream.close()


def test_stream_without_a_cursor_starts_with_the_points_logged_from_now_on(server, monitor):
    train(monitor, 3)
    stream = Stream(server)
    stream.next(), stream.next()  # retry, status
    train(monitor, 1, start=4)
    assert stream.next_point()["id"] == "4"
    stream.close()


def test_stream_sends_a_status_event_when_the_state_changes(server, monitor):
    stream = Stream(server)
    stream.next(), stream.next()  # retry, first status
    monitor.run_ended(iteration=0, state="finished")
    event = wait_until(lambda: (e := stream.next()) and e.get("event") == "status" and e, timeout=5)
    assert json.loads(event["data"])["state"] == "finished"
    stream.close()


def test_an_idle_stream_gets_keepalive_comments(monitor, tmp_path):
    with MonitorCli(tmp_path / "run", "--stream-keepalive", "0.3") as cli:
        stream = Stream(cli)
        stream.next(), stream.next()  # retry, status
        assert stream.next() == {":": "keepalive"}
        stream.close()


# --- shutdown and ports -----------------------------------------------------------------------------

def test_serve_starts_a_monitor_process_that_serves_the_recording_until_close(monitor):
    monitor.iteration(iteration=1, tokens=256, timestamp=1001.0)
    server = monitor.serve(port=0)
    try:
        assert server.pid != os.getpid()
        assert sample(server.url, "nanogpt_tokens_total") == 256
    finally:
        monitor.close()
    assert server.process.poll() is not None  # close() stopped it


def test_close_ends_an_open_stream_and_frees_the_port(monitor):
    server = monitor.serve(port=0)
    stream = Stream(server)
    stream.next()
    server.close()
    while (event := stream.next()) is not None:  # what was sent before the close, then the end
        assert event.get("event") == "status"
    monitor.serve(port=server.port).close()  # the port is free for the next server


def test_close_stops_the_monitor_process_cleanly(monitor):
    server = monitor.serve(port=0)
    server.close()
    assert server.process.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2).close()


def test_a_port_in_use_is_a_one_sentence_error(monitor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            monitor.serve(host="127.0.0.1", port=port)
    assert str(info.value) == f"cannot serve metrics on 127.0.0.1:{port}: the port is already in use"


def test_the_trainer_cli_refuses_a_port_in_use_with_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "nanogpt", f"--data_cache_dir={tmp_path / 'cache'}",
             f"--out_dir={tmp_path}", f"--metrics-port={port}", "--max_iters=1", "--device=cpu",
             "--n_layer=1", "--n_head=1", "--n_embd=16", "--block_size=8", "--batch_size=2", "--compile=False"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: cannot serve metrics on 127.0.0.1:{port}: the port is already in use"
