"""exporter.history at a long run's scale: a million points stay bounded and even, and 100k points
cost less memory than the old 12k did. Plain logic, but tens of seconds of appends each, so kept out
of the unit layer's seconds (the history's behaviour point by point: tests/unit/test_history.py)."""

import tracemalloc

import pytest

from exporter.history import History
from exporter.point import Point

pytestmark = pytest.mark.slow


def test_a_million_iteration_run_stays_bounded_and_keeps_the_recent_tail_whole():
    history = History(recent=1000, older=200)
    for i in range(1_000_000):
        history.append(Point(i, 1.0))
    points = history.since(None)
    assert len(history) <= 1200
    assert [p.iteration for p in points[-1000:]] == list(range(999_000, 1_000_000))
    assert points[0].iteration == 0  # thinning keeps the very first point: charts start where the run did
    assert all(a.iteration < b.iteration for a, b in zip(points, points[1:]))


def test_a_long_runs_older_points_cover_it_evenly():
    history = History(recent=1000, older=200)
    for i in range(1_000_000):
        history.append(Point(i, 1.0))
    older = [p.iteration for p in history.since(None)[:-1000]]
    gaps = {b - a for a, b in zip(older, older[1:])}
    assert len(gaps) == 1 and len(older) > 100  # one stride from the first iteration to the recent tail
    assert older[0] == 0 and 999_000 - older[-1] <= gaps.pop()


def test_the_default_history_holds_over_100k_points_in_less_memory_than_12000_cached_points_took():
    def filled(history, count):
        for i in range(count):
            history.append(Point(i, 2.0 + 1 / (i + 1), lr=6e-4, step_seconds=0.1, tokens_per_second=7680.0,
                                 elapsed_seconds=float(i), timestamp=1.7e9 + i, grad_norm=0.5, mfu=0.01,
                                 loss_ema=2.0 + 1 / (i + 2)))
        return history

    def traced(make):
        tracemalloc.start()
        try:
            kept = make()
            return kept, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    old_default, old_bytes = traced(lambda: filled(History(recent=10_000, older=2_000), 12_000))
    new_default, new_bytes = traced(lambda: filled(History(), 103_000))
    assert len(old_default) == 12_000 and len(new_default) == 103_000 and new_bytes < old_bytes
