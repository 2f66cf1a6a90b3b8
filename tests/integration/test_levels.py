"""exporter.overview.Levels: the overview kept up to date as points arrive, so /api/history?points=N reads
about N kept points at any history length, and keeps what the held (thinned) points lost."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import History, Point
from exporter.overview import SLOTS, Levels
from exporter.point import COLUMNS

LONG = 200_000  # logged points of the long run (a million take about 30 s to append here: the same levels)
SPIKE, DIP, GAP = 123_457, 45_679, range(150_001, 150_011)  # odd iterations: thinned away from the held points
EVALS = range(5_003, LONG, 10_000)
NAMES = ["iteration", "loss", "val_loss"]
VAL = COLUMNS.index("val_loss")


def loss_at(i):
    return 2.0 + 1.0 / (1 + i / 5_000) + 0.01 * ((i * 7919) % 13) / 13


def logged(i, loss=None):
    """The long run's point at iteration i: a smooth noisy loss, a spike, a dip and a NaN gap."""
    if loss is None:
        loss = 50.0 if i == SPIKE else -1.0 if i == DIP else math.nan if i in GAP else loss_at(i)
    return Point(i, loss, timestamp=1_000.0 + i)


@pytest.fixture(scope="module")
def long_run():
    """The default history after LONG logged points, an eval merged into the point of each of EVALS."""
    history = History()
    for i in range(LONG):
        history.append(logged(i))
        if i in EVALS:
            history.amend_last(i, val_loss=3.0 + (i % 7) / 10)
    return history


def overview(history, **options):
    return json.loads(history.to_json("r", 0, layout="columns", names=NAMES, **options))


def test_a_long_runs_overview_keeps_its_extremes_its_nan_gap_and_every_eval_even_those_thinned_away(long_run):
    held = {p.iteration for p in long_run.since(None)}
    assert SPIKE not in held and DIP not in held and GAP[0] not in held  # what the old overview could not show
    body = overview(long_run, points=2_000)
    its = body["iteration"]
    assert its[0] == 0 and its[-1] == LONG - 1 and its == sorted(set(its))
    assert {SPIKE, DIP, GAP[0]} <= set(its)
    assert body["loss"][its.index(SPIKE)] == 50.0 and body["loss"][its.index(GAP[0])] is None
    assert {it for it, v in zip(its, body["val_loss"]) if v is not None} == set(EVALS)


@pytest.mark.parametrize("points", [200, 2_112])
def test_an_overview_is_about_the_points_asked_at_any_length(long_run, points):
    for history, evals in ((long_run, len(EVALS)), (short_run(5_000), 0), (short_run(40_000), 0)):
        its = overview(history, points=points)["iteration"]
        assert points // 2 <= len(its) <= points + evals + len(GAP) + 2


def short_run(n):
    history = History()
    for i in range(n):
        history.append(logged(i))
    return history


def test_a_range_overview_keeps_the_ranges_extremes_and_stays_inside_it(long_run):
    body = overview(long_run, since=100_000, until=160_000, points=400)
    its, first_held = body["iteration"], long_run.since(100_000)[0].iteration
    assert its[0] == first_held and its[-1] == 160_000 and all(100_000 < it <= 160_000 for it in its)
    assert {SPIKE, GAP[0]} <= set(its) and DIP not in its
    assert len(its) <= 400 + len(GAP) + 2 + sum(100_000 < it <= 160_000 for it in EVALS)


def test_a_truncate_and_new_points_give_the_overview_of_a_history_logged_straight():
    resumed, straight = History(), History()
    for i in range(50_000):
        resumed.append(logged(i))
    for i in range(30_000, 60_000):  # a resume from iteration 30,000 logs it anew, and what follows
        resumed.append(logged(i, loss=1.0 + math.sin(i)))
    for i in range(60_000):
        straight.append(logged(i) if i < 30_000 else logged(i, loss=1.0 + math.sin(i)))
    for options in ({"points": 2_112}, {"points": 300, "since": 12_345, "until": 45_678}):
        assert resumed.to_json("r", 0, **options) == straight.to_json("r", 0, **options)


def test_an_eval_merged_into_the_newest_point_shows_in_the_overview_and_a_new_one_replaces_it():
    history = short_run(50_000)
    history.amend_last(49_999, val_loss=9.5)
    body = overview(history, points=300)
    assert (body["iteration"][-1], body["val_loss"][-1]) == (49_999, 9.5)
    history.amend_last(49_999, val_loss=0.5)  # the newest point's val_loss was an extreme: no longer that one
    history.amend_last(49_999, val_loss=None)
    history.append(Point(50_000, 3.0, val_loss=7.0))
    body = overview(history, points=300)
    assert [v for v in body["val_loss"] if v is not None] == [7.0]


def test_an_overview_wider_than_the_finest_level_comes_from_the_held_points(long_run):
    body = overview(long_run, points=20_000)
    held = {p.iteration for p in long_run.since(None)}
    assert set(body["iteration"]) <= held and 10_000 <= len(body["iteration"]) <= 20_000 + len(EVALS) + 2


def brute_slots(points):
    """What a bucket keeps, by iteration, from all its points: lowest and highest loss and val_loss (the
    first of equals), the first non-finite loss."""
    finite = [p for p in points if math.isfinite(p.loss)]
    evals = [p for p in points if p.val_loss is not None and math.isfinite(p.val_loss)]
    pick = (lambda ps, key: min(ps, key=key).iteration if ps else None)
    return [pick(finite, lambda p: (p.loss, p.iteration)), pick(finite, lambda p: (-p.loss, p.iteration)),
            pick(evals, lambda p: (p.val_loss, p.iteration)), pick(evals, lambda p: (-p.val_loss, p.iteration)),
            next((p.iteration for p in points if not math.isfinite(p.loss)), None)]


def kept_of_bucket(lv, level, key):
    """The points the levels keep of bucket `key` of `level`: its own, and the newest buckets below and
    the open one where they fall in it (what the level does not hold yet)."""
    columns, kept = lv.rows.columns, []
    for below in range(level + 1):
        keys, slots = lv.keys[below], lv.slots[below]
        for b in ([keys.index(key)] if below == level else [len(keys) - 1] if keys else []):
            if keys[b] >> (level - below) == key:
                kept += [Point(int(columns[0][i]), columns[1][i], val_loss=None if math.isnan(columns[VAL][i])
                               else columns[VAL][i]) for i in slots[b * SLOTS:(b + 1) * SLOTS] if i >= 0]
    if lv.open_key is not None and lv.open_key >> level == key:
        kept += [p for p in lv.open if p is not None]
    return sorted({p.iteration: p for p in kept}.values(), key=lambda p: p.iteration)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["log", "log", "log", "amend", "truncate"]), st.integers(1, 12),
                          st.one_of(st.floats(0, 5), st.just(math.nan)), st.booleans()), max_size=300))
def test_every_bucket_keeps_the_extremes_of_its_points_through_amends_and_truncates(ops):
    lv, logged_points = Levels(finest_buckets=8), []  # the finest level dropped many times in a few hundred points
    held = (lambda first: [p for p in logged_points if p.iteration >= first])
    for op, step, value, with_eval in ops:
        newest = logged_points[-1].iteration if logged_points else -1
        if op == "log":
            logged_points.append(Point(newest + step, value, val_loss=step / 3 if with_eval else None))
            lv.add(logged_points[-1])
        elif op == "amend" and logged_points:
            old = logged_points[-1]
            logged_points[-1] = Point(old.iteration, old.loss, val_loss=value if with_eval else None)
            lv.amend(old, logged_points[-1], held)
        elif op == "truncate" and logged_points:
            logged_points = [p for p in logged_points if p.iteration <= newest - step]
            lv.truncate(newest - step, logged_points[-1].iteration if logged_points else None, held)
    for level, keys in enumerate(lv.keys):
        for key in keys:
            members = [p for p in logged_points if p.iteration >> (lv.shift + level) == key]
            assert brute_slots(kept_of_bucket(lv, level, key)) == brute_slots(members)
