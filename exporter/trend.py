"""Loss trend and window mean by the Prometheus recording rules' definitions, and the debiased loss EMA.

prometheus/rules/nanogpt-recording.yml takes, from the nanogpt_logged_loss summary, the mean logged
loss over the last window W and over the window before it, and classifies the relative improvement
between them:

    ratio = (previous - current) / previous       (positive = improving)
    improving if ratio > T, rising if ratio < -T, else plateau,
    only when both windows hold >= MIN_POINTS finite logged losses.

Here the same figures come from the history's (timestamp, loss) samples, for /api/status and the
page. Windows are by unix timestamp, (now - W, now] and (now - 2W, now - W]; `now` defaults to the
newest sample, so a finished run keeps the trend it ended with. Non-finite losses are left out, as
the summary leaves them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

WINDOW_SECONDS = 600.0  # W: 10 minutes per window
THRESHOLD = 0.01  # T: 1 % relative improvement between consecutive windows
MIN_POINTS = 5  # logged losses each window must hold before a trend is claimed

Sample = tuple[float, float]  # (unix seconds, loss)


@dataclass(frozen=True)
class Trend:
    """The loss trend between the last two windows."""

    state: str  # "improving" | "plateau" | "rising" | "unknown"
    improvement_ratio: Optional[float]  # (previous - current) / previous; None when unknown
    window_seconds: float
    threshold: float
    current_mean: Optional[float]
    previous_mean: Optional[float]


def window_mean(samples: Sequence[Sample], start: float, end: float) -> tuple[Optional[float], int]:
    """Mean and count of the finite losses with start < timestamp <= end (samples in time order)."""
    total, count = 0.0, 0
    for timestamp, loss in reversed(samples):  # newest first: stop once past the window
        if timestamp <= start:
            break
        if timestamp <= end and loss is not None and math.isfinite(loss):
            total += loss
            count += 1
    return (total / count if count else None), count


def average_loss(samples: Sequence[Sample], now: Optional[float] = None,
                 window: float = WINDOW_SECONDS) -> Optional[float]:
    """Exact mean of the finite logged losses over the last `window` seconds (None if none)."""
    if not samples:
        return None
    now = samples[-1][0] if now is None else now
    return window_mean(samples, now - window, now)[0]


def classify(ratio: float, threshold: float = THRESHOLD) -> str:
    """improving / plateau / rising for a relative improvement `ratio`."""
    if ratio > threshold:
        return "improving"
    if ratio < -threshold:
        return "rising"
    return "plateau"


def loss_trend(samples: Sequence[Sample], now: Optional[float] = None, window: float = WINDOW_SECONDS,
               threshold: float = THRESHOLD, min_points: int = MIN_POINTS) -> Trend:
    """The trend of `samples` ((timestamp, loss) in time order) at time `now` (default: newest sample)."""
    unknown = Trend("unknown", None, window, threshold, None, None)
    if not samples:
        return unknown
    now = samples[-1][0] if now is None else now
    current, n_current = window_mean(samples, now - window, now)
    previous, n_previous = window_mean(samples, now - 2 * window, now - window)
    if n_current < min_points or n_previous < min_points or not previous:
        return Trend("unknown", None, window, threshold, current, previous)
    ratio = (previous - current) / previous
    return Trend(classify(ratio, threshold), ratio, window, threshold, current, previous)


EMA_BETA = 0.9  # TensorBoard's default smoothing weight


class DebiasedEma:
    """TensorBoard-style smoothing: an EMA divided by (1 - beta^n) so early values are not biased to 0."""

    def __init__(self, beta: float = EMA_BETA):
        self.beta, self._value, self._count = beta, 0.0, 0

    def update(self, x: float) -> float:
        self._value = self.beta * self._value + (1 - self.beta) * x
        self._count += 1
        return self.value

    @property
    def value(self) -> Optional[float]:
        return self._value / (1 - self.beta ** self._count) if self._count else None
