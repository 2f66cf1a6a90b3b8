"""exporter.server: the routes, content negotiation, SSE, errors and shutdown, over real HTTP."""

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

STATUS_KEYS = {
    "run_id", "rank", "world_size", "state", "iteration", "max_iterations", "loss", "loss_ema", "val_loss",
    "eval_train_loss", "best_val_loss", "lr", "tokens_per_second", "iterations_per_second", "step_seconds", "mfu",
    "eta_seconds", "elapsed_seconds", "start_time", "parameters_total", "dataset", "device", "trend",
    "average_loss",
}
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
TREE = {"name": "", "type": "GPT", "kind": "model", "parameters": 1000, "children": [
    {"name": "transformer.h.0.attn", "type": "CausalSelfAttention", "kind": "attention", "heads": 2,
     "head_size": 16, "parameters": 1000}]}


@pytest.fixture
def monitor():
    monitor = TrainingMonitor(run_id="r1", rank=0)
    monitor.run_started(max_iterations=100, tokens_per_iteration=256, model_config=MODEL,
                        parameters={"total": 1000}, start_time=time.time(), model_tree=TREE)
    return monitor


@pytest.fixture
def server(monitor):
    server = monitor.serve(host="127.0.0.1", port=0, keepalive_seconds=0.3)
    yield server
    server.close()


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


def test_the_exporter_times_its_own_scrapes(server, monitor):
    get(server, "/metrics")
    labels = {"run_id": "r1", "rank": "0"}
    assert monitor.registry.get_sample_value("nanogpt_exporter_scrape_duration_seconds", labels) > 0


def test_promtool_accepts_a_scrape_of_metrics(server, monitor):
    promtool = require("promtool")
    train(monitor, 5)
    monitor.evaluated(iteration=5, train_loss=3.9, val_loss=3.95)
    result = subprocess.run([promtool, "check", "metrics"], input=get(server, "/metrics")[2],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/../etc/passwd", "/static/../../pyproject.toml"])
def test_unknown_paths_are_404(server, path):
    assert get(server, path)[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "BREW"])
def test_other_methods_are_405_with_allow(server, method):
    status, headers, _ = get(server, "/metrics", method=method)
    assert status == 405 and headers["Allow"] == "GET"


def test_status_has_the_agreed_fields(server, monitor):
    train(monitor, 3)
    status = json.loads(get(server, "/api/status")[2])
    assert STATUS_KEYS <= status.keys()
    assert status["iteration"] == 3 and status["state"] == "running"
    assert set(status["trend"]) == {"state", "improvement_ratio", "window_seconds", "threshold"}


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


def test_csv_export_is_an_attachment_with_one_row_per_logged_iteration(server, monitor):
    train(monitor, 4)
    _, headers, body = get(server, "/export.csv")
    assert headers["Content-Disposition"] == 'attachment; filename="nanogpt-r1.csv"'
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]


def test_the_root_serves_an_html_page(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.lstrip().lower().startswith(b"<!doctype html>")


class Stream:
    """A raw SSE client: read events as dicts {id, event, data} or ':' comments."""

    def __init__(self, server, path="/api/stream", headers=None):
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self):
        event = {}
        while True:
            line = self.response.fp.readline().decode()
            if line == "":
                return None  # the server ended the stream
            line = line.rstrip("\n")
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


def test_stream_sends_a_status_event_when_the_state_changes(server, monitor):
    stream = Stream(server)
    stream.next(), stream.next()  # retry, first status
    monitor.run_ended(iteration=0, state="finished")
    event = wait_until(lambda: (e := stream.next()) and e.get("event") == "status" and e, timeout=5)
    assert json.loads(event["data"])["state"] == "finished"
    stream.close()


def test_an_idle_stream_gets_keepalive_comments(server):
    stream = Stream(server)
    assert wait_until(lambda: ":" in stream.next(), timeout=5)


def test_close_ends_open_streams_and_frees_the_port(monitor):
    server = monitor.serve(port=0)
    stream = Stream(server)
    stream.next()
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 3
    while (event := stream.next()) is not None:
        assert event.get("event") == "status"
    monitor.serve(port=server.port).close()  # the port is free for the next server


def test_a_port_in_use_is_a_one_sentence_error(monitor):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as info:
            monitor.serve(host="127.0.0.1", port=port)
    assert str(info.value) == f"cannot serve metrics on 127.0.0.1:{port}: the port is already in use"


def test_a_stalled_client_does_not_block_metrics(server):
    with socket.create_connection((server.host, server.port)) as stalled:
        stalled.sendall(b"GET /metr")  # and never finishes the request
        started = time.monotonic()
        assert get(server, "/metrics")[0] == 200
        assert time.monotonic() - started < 2


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
