"""exporter.trend: the loss trend by the recording rules' definition, from logged samples."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.trend import MIN_POINTS, THRESHOLD, WINDOW_SECONDS, average_loss, classify, loss_trend, window_mean

W = WINDOW_SECONDS


def two_windows(previous_loss, current_loss, per_window=10, now=10_000.0):
    """Samples spread evenly over (now-2W, now-W] at previous_loss and (now-W, now] at current_loss."""
    step = W / per_window
    older = [(now - W - i * step, previous_loss) for i in range(per_window)][::-1]
    newer = [(now - i * step, current_loss) for i in range(per_window)][::-1]
    return older + newer


@pytest.mark.parametrize("previous, current, state", [
    (4.0, 3.0, "improving"),  # 25 % better
    (4.0, 4.0 * (1 - THRESHOLD / 2), "plateau"),  # better, but by less than T
    (4.0, 4.0, "plateau"),
    (4.0, 4.0 * (1 + THRESHOLD / 2), "plateau"),
    (4.0, 5.0, "rising"),
])
def test_trend_compares_the_mean_of_two_consecutive_windows(previous, current, state):
    trend = loss_trend(two_windows(previous, current))
    assert trend.state == state
    assert trend.improvement_ratio == pytest.approx((previous - current) / previous)


def test_no_verdict_until_both_windows_hold_min_points():
    samples = two_windows(4.0, 3.0, per_window=MIN_POINTS)
    assert loss_trend(samples).state == "improving"
    assert loss_trend(samples[1:]).state == "unknown"  # the older window one short
    assert loss_trend(samples[1:]).improvement_ratio is None


def test_no_samples_is_unknown():
    assert loss_trend([]).state == "unknown"
    assert average_loss([]) is None


def test_non_finite_losses_are_left_out_like_the_summary_leaves_them_out():
    samples = [(1.0, 2.0), (2.0, math.nan), (3.0, math.inf), (4.0, 4.0)]
    assert window_mean(samples, 0.0, 4.0) == (3.0, 2)


def test_windows_are_open_at_the_start_and_closed_at_the_end():
    samples = [(100.0, 1.0), (200.0, 3.0)]
    assert window_mean(samples, 100.0, 200.0) == (3.0, 1)


def test_average_loss_is_the_exact_mean_over_the_last_window():
    samples = [(0.0, 100.0)] + [(W + i, float(i)) for i in range(1, 11)]
    assert average_loss(samples) == pytest.approx(5.5)  # the point at t=0 is more than W before the last


def test_now_can_be_given_so_a_window_can_be_empty():
    samples = two_windows(4.0, 3.0)
    assert loss_trend(samples, now=samples[-1][0] + 3 * W).state == "unknown"


@given(st.floats(min_value=-1, max_value=1, allow_nan=False))
def test_classify_matches_the_rule_thresholds(ratio):
    expected = 1 if ratio > THRESHOLD else (-1 if ratio < -THRESHOLD else 0)
    assert {"improving": 1, "plateau": 0, "rising": -1}[classify(ratio)] == expected
