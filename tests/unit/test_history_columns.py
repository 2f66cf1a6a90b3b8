"""GET /api/history?format=columns: an array per field, the same values as the object per point.

Asked of the monitor process's routes called as functions (tests/support/routes.py), like tests/unit/test_server.py.
"""

import json
import math

import pytest

from exporter import History, Point, TrainingMonitor
from exporter.point import COLUMNS
from tests.support.routes import routes_of


@pytest.fixture
def monitor():
    monitor = TrainingMonitor(run_id="r1", rank=0)
    monitor.run_started(max_iterations=100, tokens_per_iteration=256, start_time=1000.0)
    for i in range(1, 8):
        if i == 4:
            monitor.evaluated(iteration=i, train_loss=3.5, val_loss=3.75)
        monitor.log(iteration=i, loss=float("nan") if i == 6 else 4.0 - 0.1 * i, lr=1e-3 * i,
                    step_seconds=0.01, tokens_per_second=25600.0, timestamp=1000.0 + i / 3)
    return monitor


@pytest.fixture
def server(monitor, loop):
    """The routes over the monitor's run directory, in this process."""
    return routes_of(monitor, loop)


def get(server, path):
    return server.json(path)


def as_points(body):
    """The columnar body turned back into one dict per point."""
    return [dict(zip(body["columns"], values)) for values in zip(*(body[name] for name in body["columns"]))]


def test_columns_hold_exactly_the_points_of_the_default_format(server):
    _, points = get(server, "/api/history")
    status, columns = get(server, "/api/history?format=columns")
    assert status == 200
    assert (columns["run_id"], columns["rank"], columns["columns"]) == ("r1", 0, list(COLUMNS))
    assert as_points(columns) == points["points"]
    assert [p["iteration"] for p in points["points"]] == list(range(1, 8))


def test_a_missing_or_non_finite_value_is_null_in_its_column(server):
    _, body = get(server, "/api/history?format=columns")
    assert body["loss"][5] is None  # the NaN at iteration 6
    assert body["val_loss"] == [None, None, None, 3.75, None, None, None]


def test_since_gives_the_tail_in_columns_too(server):
    _, body = get(server, "/api/history?format=columns&since=5")
    assert body["iteration"] == [6, 7]
    assert len(body["lr"]) == 2


def test_fields_picks_the_columns_in_the_order_asked(server):
    _, body = get(server, "/api/history?format=columns&fields=loss,iteration")
    assert body["columns"] == ["loss", "iteration"]
    assert set(body) == {"run_id", "rank", "columns", "loss", "iteration"}


@pytest.mark.parametrize("query, word", [
    ("format=rows", "format"),
    ("format=columns&fields=loss,nope", "fields"),
    ("fields=loss", "fields"),  # a field selection only exists for columns
])
def test_a_bad_format_or_field_is_a_400_with_a_json_error(server, query, word):
    status, body = get(server, "/api/history?" + query)
    assert status == 400 and word in body["error"]


@pytest.mark.parametrize("recent, logged", [(4, 12), (300, 1_000)])  # 300: past the table's compaction
def test_the_columns_follow_thinning_truncation_and_amends(recent, logged):
    history = History(recent=recent, older=4)
    for i in range(logged):
        history.append(Point(i, 10.0 - i, timestamp=float(i)))
    history.amend_last(logged - 1, val_loss=0.5)
    history.truncate(logged - 2)
    history.append(Point(logged - 1, math.inf))
    body = json.loads(history.to_json("r", 0, layout="columns"))
    objects = json.loads(history.to_json("r", 0))["points"]
    assert as_points(body) == objects == [p.to_json() for p in history.since(None)]
    assert body["iteration"][-recent:] == list(range(logged - recent, logged)) and body["loss"][-1] is None
    assert len(body["iteration"]) <= recent + 4


def test_a_point_serialises_to_the_text_json_dumps_gives():
    p = Point(3, 2.0 / 3, lr=1e-5, timestamp=1.7e9 + 0.1, grad_norm=math.nan, mfu=7)
    assert p.json == json.dumps(p.to_json(), separators=(",", ":"))
