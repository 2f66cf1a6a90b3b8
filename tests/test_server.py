"""The monitor process's HTTP server (exporter.app): routes, content negotiation, HEAD, SSE, CSV,
errors and shutdown, over real HTTP to the process TrainingMonitor.serve() starts on loopback."""

import csv
import gzip
import http.client
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from exporter import PortInUseError, TrainingMonitor
from tests.support.procs import REPO, free_port, require, wait_until
from tests.support.raw_http import ROUTES, parse_response
from tests.support.served import MODEL, MonitorCli, sample

STATUS_KEYS = {
    "run_id", "rank", "world_size", "state", "iteration", "max_iterations", "loss", "loss_ema", "val_loss",
    "eval_train_loss", "best_val_loss", "lr", "tokens_per_second", "iterations_per_second", "step_seconds", "mfu",
    "eta_seconds", "elapsed_seconds", "start_time", "parameters_total", "dataset", "device", "trend",
    "average_loss",
}
TREE = {"name": "", "type": "GPT", "kind": "model", "parameters": 1000, "children": [
    {"name": "transformer.h.0.attn", "type": "CausalSelfAttention", "kind": "attention", "heads": 2,
     "head_size": 16, "parameters": 1000}]}


@pytest.fixture
def monitor(tmp_path):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run")
    monitor.run_started(max_iterations=100, tokens_per_iteration=256, model_config=MODEL,
                        parameters={"total": 1000}, start_time=time.time(), model_tree=TREE)
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


# --- routes ---------------------------------------------------------------------------------------

def test_healthz_says_ok(server):
    assert get(server, "/healthz")[::2] == (200, b"ok\n")


def test_metrics_are_the_prometheus_text_format_by_default(server, monitor):
    train(monitor, 3)
    status, headers, body = get(server, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'nanogpt_iterations_total{rank="0",run_id="r1"} 3.0' in body


def test_metrics_are_openmetrics_when_asked(server):
    status, headers, body = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_are_gzipped_when_asked(server):
    _, headers, body = get(server, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"nanogpt_iteration" in gzip.decompress(body)


def test_metrics_name_filter_keeps_only_the_named_families(server):
    body = get(server, "/metrics?name[]=nanogpt_iteration")[2].decode()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if not line.startswith("#")}
    assert names == {"nanogpt_iteration"}


def test_the_exporter_times_its_own_scrapes(server):
    get(server, "/metrics")
    assert sample(server.url, "nanogpt_exporter_scrape_duration_seconds") > 0


def test_promtool_accepts_a_scrape_of_metrics(server, monitor):
    promtool = require("promtool")
    train(monitor, 5)
    monitor.evaluated(iteration=5, train_loss=3.9, val_loss=3.95)
    result = subprocess.run([promtool, "check", "metrics"], input=get(server, "/metrics")[2],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_an_answer_includes_every_event_recorded_before_the_request(server, monitor):
    for i in range(1, 21):  # no waiting between recording and asking: each request reads the directory first
        train(monitor, 1, start=i)
        points = json.loads(get(server, f"/api/history?since={i - 1}")[2])["points"]
        assert [p["iteration"] for p in points] == [i]
        assert json.loads(get(server, "/api/status")[2])["iteration"] == i


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/../etc/passwd", "/static/../../pyproject.toml"])
def test_unknown_paths_are_a_404_json_error(server, path):
    status, headers, body = get(server, path)
    assert (status, headers["Content-Type"], json.loads(body)) == (404, "application/json", {"error": "not found"})


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(server, method):
    status, headers, body = get(server, "/metrics", method=method)
    assert (status, headers["Allow"]) == (405, "GET")
    if method == "HEAD":
        return  # no body after a HEAD's headers
    assert json.loads(body) == {"error": "method not allowed"}


@pytest.mark.parametrize("route", ROUTES)
def test_head_is_405_without_a_body_on_every_route(server, route):
    head = raw(server, route, "HEAD")  # parse_response fails on any body after a HEAD's headers
    assert (head.status, head.headers["allow"]) == (405, "GET")


def test_status_has_the_agreed_fields(server, monitor):
    train(monitor, 3)
    status = json.loads(get(server, "/api/status")[2])
    assert STATUS_KEYS <= status.keys()
    assert status["iteration"] == 3 and status["state"] == "running"
    assert set(status["trend"]) == {"state", "improvement_ratio", "window_seconds", "threshold"}


def test_a_rank_not_on_this_node_is_a_400_naming_the_ranks_there(server):
    status, _, body = get(server, "/api/status?rank=3")
    assert status == 400 and json.loads(body)["error"] == "no rank 3 records on this node (ranks: [0])"


def test_history_returns_points_and_the_tail_after_since(server, monitor):
    train(monitor, 5)
    body = json.loads(get(server, "/api/history")[2])
    assert (body["run_id"], body["rank"]) == ("r1", 0)
    assert [p["iteration"] for p in body["points"]] == [1, 2, 3, 4, 5]
    assert [p["iteration"] for p in json.loads(get(server, "/api/history?since=3")[2])["points"]] == [4, 5]


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "9" * 40])
def test_a_bad_since_is_a_400_with_a_json_error(server, since):
    status, _, body = get(server, f"/api/history?since={since}")
    assert status == 400 and "since" in json.loads(body)["error"]


def test_a_non_finite_loss_is_null_in_json(server, monitor):
    monitor.log(iteration=1, loss=float("nan"))
    assert json.loads(get(server, "/api/history")[2])["points"][0]["loss"] is None


def test_model_serves_the_config_counts_and_module_tree(server):
    body = json.loads(get(server, "/api/model")[2])
    assert body == {"model_config": MODEL, "parameters": {"total": 1000}, "tree": TREE}


def test_samples_are_served_newest_first_a_page_at_a_time(server, monitor):
    for iteration in (0, 250, 500):
        monitor.sample(iteration, f"at {iteration}", prompt="\n", seconds=0.5, timestamp=1.0)
    body = json.loads(get(server, "/api/samples?limit=2")[2])
    assert (body["run_id"], body["rank"], body["more"]) == ("r1", 0, True)
    assert body["samples"] == [
        {"iteration": 500, "sample": "at 500", "prompt": "\n", "timestamp": 1.0, "seconds": 0.5},
        {"iteration": 250, "sample": "at 250", "prompt": "\n", "timestamp": 1.0, "seconds": 0.5}]
    older = json.loads(get(server, "/api/samples?limit=2&before=250")[2])
    assert [s["iteration"] for s in older["samples"]] == [0] and older["more"] is False


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "before=-1"])
def test_a_bad_samples_query_is_a_400_with_a_json_error(server, query):
    status, _, body = get(server, f"/api/samples?{query}")
    assert status == 400 and query.split("=")[0] in json.loads(body)["error"]


def test_csv_export_is_an_attachment_with_one_row_per_logged_iteration(server, monitor):
    train(monitor, 4)
    _, headers, body = get(server, "/export.csv")
    assert headers["Content-Disposition"] == 'attachment; filename="nanogpt-r1.csv"'
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]


def test_the_csv_file_name_keeps_only_safe_characters_of_the_run_id(tmp_path):
    monitor = TrainingMonitor(run_id='a b/../"c";d', rank=0, directory=tmp_path / "run")
    try:
        _, headers, _ = get(monitor.serve(port=0), "/export.csv")
        assert headers["Content-Disposition"] == 'attachment; filename="nanogpt-a_b_..__c__d.csv"'
    finally:
        monitor.close()


def test_the_root_serves_an_html_page(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.lstrip().lower().startswith(b"<!doctype html>")


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
