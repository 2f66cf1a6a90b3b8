"""exporter.history: bounded in-memory history, the JSON-lines metrics log, CSV rows."""

import csv
import io
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.history import History
from exporter.point import COLUMNS, Point, csv_lines
from exporter.metricslog import MetricsLog


def point(i, loss=None, **values):
    return Point(iteration=i, loss=float(10 - i * 0.001) if loss is None else loss, timestamp=1000.0 + i, **values)


def test_a_short_run_is_kept_whole():
    history = History(recent=100, older=10)
    for i in range(50):
        history.append(point(i))
    assert [p.iteration for p in history.since(None)] == list(range(50))


def test_since_returns_the_points_after_an_iteration():
    history = History()
    for i in range(0, 100, 10):
        history.append(point(i))
    assert [p.iteration for p in history.since(45)] == [50, 60, 70, 80, 90]
    assert history.since(90) == []


@given(st.lists(st.integers(min_value=0, max_value=10_000), unique=True), st.integers(min_value=-1, max_value=10_001))
def test_since_equals_a_filter_of_every_point(iterations, cursor):
    history = History()
    for i in sorted(iterations):
        history.append(Point(i, 1.0))
    assert [p.iteration for p in history.since(cursor)] == [i for i in sorted(iterations) if i > cursor]


def test_a_relogged_iteration_replaces_it_and_drops_what_came_after():
    history = History()
    for i in range(5):
        history.append(point(i))
    history.append(point(2, loss=0.5))
    assert [(p.iteration, p.loss) for p in history.since(None)][-1] == (2, 0.5)
    assert len(history) == 3


def test_amend_last_only_touches_the_newest_point_at_that_iteration():
    history = History()
    history.append(point(1))
    assert history.amend_last(0, val_loss=1.0) is None
    assert history.amend_last(1, val_loss=1.0).val_loss == 1.0


def test_json_has_no_nan_and_reads_back(tmp_path):
    p = point(3, loss=math.nan, lr=1e-3)
    encoded = json.dumps(p.to_json(), allow_nan=False)
    back = Point.from_json(json.loads(encoded))
    assert back.loss is None and back.lr == 1e-3 and back.iteration == 3


@pytest.mark.parametrize("bad", [{"loss": 1.0}, {"iteration": "3", "loss": 1.0}, {"iteration": 3, "loss": "x"}, [1]])
def test_a_malformed_point_is_refused(bad):
    with pytest.raises(ValueError):
        Point.from_json(bad)


def test_the_metrics_log_round_trips_its_points(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl")
    written = [point(i, lr=0.1, val_loss=2.0 if i == 2 else None) for i in range(5)]
    for p in written:
        log.append(p)
    assert list(log.read()) == written
    log.close()


def test_a_torn_last_line_and_a_malformed_line_are_skipped(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(point(i).to_json()) for i in range(3)]
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n" + lines[2][:20])  # kill -9 mid-write
    assert [p.iteration for p in MetricsLog(path).read()] == [0, 1]
    assert "truncated last line" in caplog.text and "malformed line" in caplog.text


def test_a_line_relogging_the_previous_iteration_replaces_it(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.append(point(1))
    log.append(point(2))
    log.append(point(2, val_loss=1.5))
    assert [(p.iteration, p.val_loss) for p in log.read()] == [(1, None), (2, 1.5)]


def test_rewrite_keeps_points_up_to_the_resume_iteration_and_appends_continue(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for i in range(10):
        log.append(point(i))
    kept, dropped = log.rewrite(6)
    assert [p.iteration for p in kept] == list(range(7))
    assert [p.iteration for p in dropped] == [7, 8, 9]
    log.append(point(7, loss=0.25))
    assert [(p.iteration, p.loss) for p in log.read()][-2:] == [(6, point(6).loss), (7, 0.25)]


def test_reading_a_missing_log_gives_nothing(tmp_path):
    assert list(MetricsLog(tmp_path / "none.jsonl").read()) == []
    assert MetricsLog(tmp_path / "none.jsonl").rewrite(5) == ([], [])
    assert not (tmp_path / "none.jsonl").exists()


def test_csv_has_a_header_then_one_row_per_point_with_empty_cells_for_missing():
    rows = list(csv.reader(io.StringIO("".join(csv_lines([point(0, lr=0.5), point(1, loss=math.inf)])))))
    assert rows[0] == list(COLUMNS)
    assert rows[1][COLUMNS.index("lr")] == "0.5"
    assert rows[2][COLUMNS.index("loss")] == "" and rows[2][COLUMNS.index("val_loss")] == ""
    assert len(rows) == 3


def logged(i):
    """A point with every kind of value: missing fields, a NaN loss, evaluations now and then."""
    return Point(i, float("nan") if i % 97 == 3 else 2.0 + 1 / (i + 1), lr=6e-4 if i % 2 else None,
                 step_seconds=0.1, timestamp=1_000.0 + i, grad_norm=float("inf") if i == 11 else 0.5,
                 val_loss=1.5 + 1 / (i + 1) if i % 50 == 0 else None)


def test_older_points_kept_as_bare_numbers_come_back_as_they_were_logged():
    history = History(recent=10, older=10_000)
    points = [logged(i) for i in range(2_000)]
    for p in points:
        history.append(p)
    assert json.loads(history.to_json("r", 0))["points"] == [p.to_json() for p in points]
    columns = json.loads(history.to_json("r", 0, layout="columns"))
    assert all(columns[name] == [p.to_json()[name] for p in points] for name in COLUMNS)
    again = history.since(None)
    assert [p.to_json() for p in again] == [p.to_json() for p in points] and again[-10:] == points[-10:]


def test_an_overview_of_older_points_is_the_same_as_of_the_points_themselves():
    thinned, whole = History(recent=10, older=10_000), History(recent=10_000)
    for i in range(5_000):
        thinned.append(logged(i))
        whole.append(logged(i))
    ask = dict(layout="columns", names=("iteration", "loss", "val_loss"), points=300)
    assert thinned.to_json("r", 0, **ask) == whole.to_json("r", 0, **ask)


def test_a_status_reads_only_the_window_before_the_newest_point():
    history = History(recent=100, older=10_000)
    for i in range(5_000):
        history.append(Point(i, 1.0, timestamp=1_000.0 + i))
    assert [p.iteration for p in history.tail(50)] == list(range(4_949, 5_000))  # from the recent points
    assert [p.iteration for p in history.tail(500)] == list(range(4_499, 5_000))  # older points too
    assert [p.iteration for p in History().tail(50)] == []


def test_a_status_window_over_many_older_points_reads_them_evenly_thinned():
    history = History(recent=100, older=100_000)
    for i in range(50_000):
        history.append(Point(i, 1.0, timestamp=1_000.0 + i / 100))  # 100 points a second
    tail = [p.iteration for p in history.tail(400)]
    assert len(tail) <= 3_100 and tail[0] == 9_999 and tail[-100:] == list(range(49_900, 50_000))
    gaps = {b - a for a, b in zip(tail, tail[1:-100])}
    assert len(gaps) == 1  # one stride through the older points


def test_the_csv_of_the_history_is_every_point_held_older_ones_included():
    history = History(recent=10, older=1_000)
    for i in range(300):
        history.append(logged(i))
    assert list(history.csv_lines()) == list(csv_lines(history.since(None)))
    assert len(list(history.csv_lines())) == 301


def test_iterations_stay_increasing_after_a_truncate_into_the_older_points():
    history = History(recent=5, older=1_000)
    for i in range(100):
        history.append(Point(i, 1.0))
    history.truncate(50)
    assert history.last().iteration == 50
    history.append(Point(40, 2.0))  # a resume from an earlier checkpoint
    iterations = [p.iteration for p in history.since(None)]
    assert iterations == list(range(41)) and history.last().loss == 2.0


def test_a_status_without_timestamps_reads_the_recent_points():
    history = History(recent=10, older=1_000)
    for i in range(100):
        history.append(Point(i, 1.0))
    assert [p.iteration for p in history.tail(50)] == list(range(90, 100))
