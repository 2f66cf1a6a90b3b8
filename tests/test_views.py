"""exporter.views: each body is made once per change, not once per request, and is never staler
than one logged point or its max age. Over real HTTP against a real in-process monitor."""

import gzip
import time
import urllib.request

import pytest

from exporter import TrainingMonitor
from tests.support.procs import wait_until

LABELS = '{rank="0",run_id="r1"}'


@pytest.fixture
def monitor():
    monitor = TrainingMonitor(run_id="r1", rank=0)
    monitor.run_started(max_iterations=100, tokens_per_iteration=256, start_time=time.time())
    return monitor


@pytest.fixture
def server(monitor):
    server = monitor.serve(host="127.0.0.1", port=0, max_age=60.0)  # only events make a body stale here
    yield server
    server.close()


def get(server, path, headers=None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers or {}), timeout=5) as r:
        return r.read()


def step(monitor, i, log=True):
    monitor.iteration(iteration=i, tokens=256)
    if log:
        monitor.log(iteration=i, loss=4.0 - 0.01 * i, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0)


def test_scrapes_with_nothing_logged_in_between_get_the_same_rendered_bytes(server, monitor):
    step(monitor, 1)
    first = get(server, "/metrics")
    assert [get(server, "/metrics") for _ in range(5)] == [first] * 5
    assert server.views.metrics_made() == 1


def test_a_logged_point_makes_the_next_scrape_new(server, monitor):
    step(monitor, 1)
    get(server, "/metrics")
    step(monitor, 2)
    assert f"nanogpt_iterations_total{LABELS} 2.0".encode() in get(server, "/metrics")
    assert server.views.metrics_made() == 2


def test_each_format_and_encoding_is_rendered_and_kept_apart(server, monitor):
    step(monitor, 1)
    openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
    text, om = get(server, "/metrics"), get(server, "/metrics", openmetrics)
    zipped = get(server, "/metrics", {"Accept-Encoding": "gzip"})
    assert om.endswith(b"# EOF\n") and not text.endswith(b"# EOF\n")
    assert gzip.decompress(zipped).startswith(text.split(b"\n", 1)[0])
    assert (get(server, "/metrics"), get(server, "/metrics", openmetrics)) == (text, om)
    assert server.views.metrics_made() == 3


def test_per_step_counters_show_within_the_max_age_without_a_logged_point(monitor):
    server = monitor.serve(host="127.0.0.1", port=0, max_age=0.2)
    try:
        step(monitor, 1)
        get(server, "/metrics")
        step(monitor, 2, log=False)  # no event: the cached body may show iteration 1 for up to 0.2 s
        wait_until(lambda: f"nanogpt_iterations_total{LABELS} 2.0".encode() in get(server, "/metrics"),
                   timeout=10, what="the second iteration on /metrics")
    finally:
        server.close()


def test_status_model_and_page_are_made_once_per_change(server, monitor):
    step(monitor, 1)
    for _ in range(3):
        get(server, "/api/status"), get(server, "/api/model"), get(server, "/")
    views = server.views
    assert (views.status_view.made, views.model_view.made, views.page_view.made) == (1, 1, 1)
    step(monitor, 2)
    assert b'"iteration":2' in get(server, "/api/status")
    assert views.status_view.made == 2


def test_streams_at_the_same_point_share_one_batch_of_events(server, monitor):
    step(monitor, 1)
    step(monitor, 2)
    first, last = server.views.events_after(0)
    again, _ = server.views.events_after(0)
    assert last == 2 and first.count(b"event: point") == 2 and again is first
    assert server.views.events_after(2) == (b"", 2)
