"""The monitor process's routes (exporter.app) as functions: what each answers, content negotiation,
JSON errors and the CSV export, on a request made in-process (tests/support/routes.py). What needs a
socket (HEAD framing, keep-alive, event streams, shutdown, ports) is tests/integration/test_server.py."""

import asyncio
import contextlib
import csv
import gzip
import io
import json
import time

import pytest

from exporter import TrainingMonitor
from tests.support.recorded import read_back, scraped_value
from tests.support.routes import routes_of
from tests.support.served import MODEL, TREE, recording

STATUS_KEYS = {
    "run_id", "rank", "world_size", "state", "iteration", "max_iterations", "loss", "loss_ema", "val_loss",
    "eval_train_loss", "best_val_loss", "lr", "tokens_per_second", "iterations_per_second", "step_seconds", "mfu",
    "eta_seconds", "elapsed_seconds", "start_time", "parameters_total", "dataset", "device", "trend",
    "average_loss", "last_loss_spike", "last_grad_norm_spike", "time_seconds", "goodput",
}


@pytest.fixture
def monitor(tmp_path):
    with contextlib.closing(recording(tmp_path / "run")) as monitor:
        yield monitor


@pytest.fixture
def routes(monitor, loop):
    routes = routes_of(monitor, loop)
    yield routes
    routes.close()


def train(monitor, iterations, start=1):
    for i in range(start, start + iterations):
        monitor.iteration(iteration=i, tokens=256, timestamp=time.time())
        monitor.log(iteration=i, loss=4.0 - 0.01 * i, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0)


def get(routes, path, headers=None, method="GET"):
    """(status, headers, body) of one request."""
    answer = routes.get(path, headers, method)
    return answer.status, answer.headers, answer.body


def test_healthz_says_ok(routes):
    assert get(routes, "/healthz")[::2] == (200, b"ok\n")


def test_metrics_are_the_prometheus_text_format_by_default(routes, monitor):
    train(monitor, 3)
    status, headers, body = get(routes, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b'nanogpt_iterations_total{rank="0",run_id="r1"} 3.0' in body


def test_metrics_are_openmetrics_when_asked(routes):
    status, headers, body = get(routes, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_are_gzipped_when_asked(routes):
    _, headers, body = get(routes, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"nanogpt_iteration" in gzip.decompress(body)


def test_metrics_name_filter_keeps_only_the_named_families(routes):
    body = get(routes, "/metrics?name[]=nanogpt_iteration")[2].decode()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if not line.startswith("#")}
    assert names == {"nanogpt_iteration"}


def test_the_exporter_times_its_own_scrapes(routes, monitor):
    get(routes, "/metrics")
    assert read_back(monitor).value("nanogpt_exporter_scrape_duration_seconds", run_id="r1", rank="0") > 0


def test_a_regular_scraper_is_answered_with_a_body_rendered_ahead_of_its_scrape(routes, monitor, loop):
    scrapes = []
    for i in range(1, 6):
        train(monitor, 1, start=i)
        loop.run_until_complete(asyncio.sleep(0.2))  # the server's loop runs meanwhile, as a server's does
        answer = routes.get("/metrics", headers={"Accept-Encoding": "gzip"}, peer=("127.0.0.1", 40000))
        scrapes.append(gzip.decompress(answer.body).decode())
    assert routes.monitor.scrape_ahead.served_ahead == 3  # the interval is known from the second scrape
    # each rendered ahead after the iteration recorded 0.2 s before its scrape
    assert [scraped_value(body, "nanogpt_iteration", rank="0", run_id="r1") for body in scrapes] == \
        [1.0, 2.0, 3.0, 4.0, 5.0]


def test_requests_without_a_client_address_are_rendered_each_time(routes, monitor, loop):
    for _ in range(4):
        get(routes, "/metrics")
        loop.run_until_complete(asyncio.sleep(0.05))
    assert routes.monitor.scrape_ahead.served_ahead == 0


def test_an_answer_includes_every_event_recorded_before_the_request(routes, monitor):
    for i in range(1, 21):  # no waiting between recording and asking: each request reads the directory first
        train(monitor, 1, start=i)
        points = json.loads(get(routes, f"/api/history?since={i - 1}")[2])["points"]
        assert [p["iteration"] for p in points] == [i]
        assert json.loads(get(routes, "/api/status")[2])["iteration"] == i


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/../etc/passwd", "/static/../../pyproject.toml"])
def test_unknown_paths_are_a_404_json_error(routes, path):
    status, headers, body = get(routes, path)
    assert (status, headers["Content-Type"], json.loads(body)) == (404, "application/json", {"error": "not found"})


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(routes, method):
    status, headers, body = get(routes, "/metrics", method=method)
    assert (status, headers["Allow"]) == (405, "GET")
    if method == "HEAD":
        assert body == b""  # no body after a HEAD's headers (tests/integration/test_server.py reads the bytes)
        return
    assert json.loads(body) == {"error": "method not allowed"}


def test_status_has_the_agreed_fields(routes, monitor):
    train(monitor, 3)
    status = json.loads(get(routes, "/api/status")[2])
    assert STATUS_KEYS <= status.keys()
    assert status["iteration"] == 3 and status["state"] == "running"
    assert set(status["trend"]) == {"state", "improvement_ratio", "window_seconds", "threshold"}


def test_a_rank_not_on_this_node_is_a_400_naming_the_ranks_there(routes):
    status, _, body = get(routes, "/api/status?rank=3")
    assert status == 400 and json.loads(body)["error"] == "no rank 3 records on this node (ranks: [0])"


def test_history_returns_points_and_the_tail_after_since(routes, monitor):
    train(monitor, 5)
    body = json.loads(get(routes, "/api/history")[2])
    assert (body["run_id"], body["rank"]) == ("r1", 0)
    assert [p["iteration"] for p in body["points"]] == [1, 2, 3, 4, 5]
    assert [p["iteration"] for p in json.loads(get(routes, "/api/history?since=3")[2])["points"]] == [4, 5]


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "9" * 40])
def test_a_bad_since_is_a_400_with_a_json_error(routes, since):
    status, _, body = get(routes, f"/api/history?since={since}")
    assert status == 400 and "since" in json.loads(body)["error"]


def test_a_non_finite_loss_is_null_in_json(routes, monitor):
    monitor.log(iteration=1, loss=float("nan"))
    assert json.loads(get(routes, "/api/history")[2])["points"][0]["loss"] is None


def test_model_serves_the_config_counts_and_module_tree(routes):
    body = json.loads(get(routes, "/api/model")[2])
    assert body == {"model_config": MODEL, "parameters": {"total": 1000}, "tree": TREE}


def test_samples_are_served_newest_first_a_page_at_a_time(routes, monitor):
    for iteration in (0, 250, 500):
        monitor.sample(iteration, f"at {iteration}", prompt="\n", seconds=0.5, timestamp=1.0)
    body = json.loads(get(routes, "/api/samples?limit=2")[2])
    assert (body["run_id"], body["rank"], body["more"]) == ("r1", 0, True)
    assert body["samples"] == [
        {"iteration": 500, "sample": "at 500", "prompt": "\n", "timestamp": 1.0, "seconds": 0.5},
        {"iteration": 250, "sample": "at 250", "prompt": "\n", "timestamp": 1.0, "seconds": 0.5}]
    older = json.loads(get(routes, "/api/samples?limit=2&before=250")[2])
    assert [s["iteration"] for s in older["samples"]] == [0] and older["more"] is False


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "before=-1"])
def test_a_bad_samples_query_is_a_400_with_a_json_error(routes, query):
    status, _, body = get(routes, f"/api/samples?{query}")
    assert status == 400 and query.split("=")[0] in json.loads(body)["error"]


def test_csv_export_is_an_attachment_with_one_row_per_logged_iteration(routes, monitor):
    train(monitor, 4)
    _, headers, body = get(routes, "/export.csv")
    assert headers["Content-Disposition"] == 'attachment; filename="nanogpt-r1.csv"'
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]


def test_the_csv_file_name_keeps_only_safe_characters_of_the_run_id(tmp_path, loop):
    monitor = TrainingMonitor(run_id='a b/../"c";d', rank=0, directory=tmp_path / "run")
    try:
        _, headers, _ = get(routes_of(monitor, loop), "/export.csv")
        assert headers["Content-Disposition"] == 'attachment; filename="nanogpt-a_b_..__c__d.csv"'
    finally:
        monitor.close()


def test_the_root_serves_an_html_page(routes):
    status, headers, body = get(routes, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert body.lstrip().lower().startswith(b"<!doctype html>")
