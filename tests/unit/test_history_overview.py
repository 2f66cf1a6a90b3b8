"""The history's overview (/api/history?points=N) and ranges (?since= / ?until=): what the page
loads first, sized to its chart, and what a zoom loads at full resolution."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import History, Point, TrainingMonitor
from exporter.overview import overview_indices
from tests.support.routes import routes_of


def history(losses, evals=(), recent=100_000):
    """A history of one point per 10 iterations with these losses; `evals`: iterations with a val_loss."""
    h = History(recent=recent)
    for k, loss in enumerate(losses):
        it = 10 * k
        h.append(Point(it, loss, timestamp=1000.0 + k, val_loss=2.0 + math.sin(k) if it in evals else None))
    return h


def body(h, **options):
    return json.loads(h.to_json("r1", 0, layout="columns", names=["iteration", "loss", "val_loss"], **options))


def test_a_history_with_at_most_two_points_per_bucket_comes_whole():
    h = history([4.0 - 0.01 * k for k in range(200)])
    assert body(h, points=400)["iteration"] == list(range(0, 2000, 10))


def test_an_overview_keeps_its_ends_every_spike_dip_eval_and_nan_and_about_two_points_per_bucket():
    losses = [3.0 + 0.1 * ((k * 7919) % 13) / 13 for k in range(10_000)]
    losses[1234], losses[5678], losses[7000] = 50.0, -1.0, math.nan
    evals = set(range(0, 100_000, 2_500))
    overview = body(history(losses, evals), points=200)  # 100 buckets of 100 points
    its = overview["iteration"]
    assert its[0] == 0 and its[-1] == 99_990 and its == sorted(set(its))
    assert {12_340, 56_780, 70_000} <= set(its)
    assert {it for it, v in zip(its, overview["val_loss"]) if v is not None} == evals
    assert len(its) <= 2 * 100 + len(evals) + 3


def test_an_overview_of_a_range_covers_only_that_range_and_is_full_resolution_when_small():
    h = history([3.0] * 10_000)
    assert body(h, since=999, until=2_000)["iteration"] == list(range(1_000, 2_001, 10))
    assert body(h, since=999, until=2_000, points=400)["iteration"] == list(range(1_000, 2_001, 10))
    assert len(body(h, until=50_000, points=100)["iteration"]) <= 102


def test_the_points_layout_takes_a_range_and_an_overview_too():
    h = history([3.0 + 0.001 * (k % 5) for k in range(1_000)])
    points = json.loads(h.to_json("r1", 0, since=95, until=130))["points"]
    assert [p["iteration"] for p in points] == [100, 110, 120, 130]
    assert len(json.loads(h.to_json("r1", 0, points=100))["points"]) <= 102


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 10), st.just(math.nan)), min_size=1, max_size=400),
       st.integers(1, 40), st.randoms())
def test_an_overview_picks_exactly_each_buckets_extremes(losses, buckets, rnd):
    """Against a plain loop over the buckets: first and last, the first lowest and highest
    loss and val_loss of each bucket, its first non-finite loss."""
    iterations = np.array(sorted(rnd.sample(range(10 * len(losses) + 1), len(losses))), dtype=float)
    loss = np.array(losses)
    val = np.array([rnd.random() if rnd.random() < 0.2 else math.nan for _ in losses])
    n = len(losses)
    expected = set(range(n)) if n <= 2 * buckets else {0, n - 1}
    if n > 2 * buckets:
        span = iterations[-1] - iterations[0] + 1
        for b in range(buckets):
            members = [i for i in range(n) if int((iterations[i] - iterations[0]) * buckets // span) == b]
            for values in (loss, val):
                finite = [i for i in members if math.isfinite(values[i])]
                if finite:
                    expected |= {min(finite, key=lambda i: (values[i], i)), min(finite, key=lambda i: (-values[i], i))}
            expected |= set([i for i in members if not math.isfinite(loss[i])][:1])
    assert overview_indices(iterations, loss, val, buckets) == sorted(expected)


@pytest.fixture
def server(loop):
    """The routes over a long run's directory, in this process."""
    monitor = TrainingMonitor(run_id="r1", rank=0)
    monitor.run_started(max_iterations=10_000, tokens_per_iteration=256, start_time=1000.0)
    for i in range(0, 5_000, 5):
        monitor.log(iteration=i, loss=3.0 + (i % 7) / 10, timestamp=1000.0 + i)
    yield routes_of(monitor, loop)
    monitor.close()


def get(server, path):
    return server.json(path)


def test_the_page_asks_for_an_overview_over_http(server):
    status, overview = get(server, "/api/history?format=columns&fields=iteration,loss&points=100")
    assert status == 200 and overview["iteration"][0] == 0 and overview["iteration"][-1] == 4_995
    assert len(overview["iteration"]) <= 102
    status, full = get(server, "/api/history?format=columns&fields=iteration&since=99&until=200")
    assert full["iteration"] == list(range(100, 201, 5))


@pytest.mark.parametrize("query, word", [("points=many", "points"), ("points=1", "points"),
                                         ("points=100001", "points"), ("until=-3", "until")])
def test_a_bad_overview_or_range_is_a_400_naming_the_parameter(server, query, word):
    status, answer = get(server, "/api/history?format=columns&" + query)
    assert status == 400 and word in answer["error"]
