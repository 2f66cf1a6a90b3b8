"""Spikes in a logged series (the loss, the grad norm): a value far above its recent past.

A logged value is a spike when it lies more than `sigmas` standard deviations above the mean of
the `window` values logged before it, as OLMo-core's and Lightning Fabric's spike detectors judge
one (128 values, 6 sigma). Nothing is judged before `warmup` values are in the window, so the
first steep steps of a run raise nothing. Every finite value joins the window, spikes included: a
lasting change of level (a learning-rate restart, a new data mix) becomes the new normal within a
window instead of alarming at every point. Only a rise counts; a fall is what training is for.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

WINDOW = 128  # logged values
SIGMAS = 6.0
WARMUP = 32  # logged values before anything is judged


@dataclass(frozen=True)
class Spike:
    iteration: int
    value: float
    mean: float  # of the window before it
    sigmas: float  # how many standard deviations above that mean


class SpikeDetector:
    """One series' rolling window; `observe` says whether a value is a spike."""

    def __init__(self, window: int = WINDOW, sigmas: float = SIGMAS, warmup: int = WARMUP):
        if window < 2 or not 2 <= warmup <= window or not sigmas > 0:
            raise ValueError(f"spike detection needs window >= warmup >= 2 and sigmas > 0, got "
                             f"window={window}, warmup={warmup}, sigmas={sigmas}")
        self.sigmas, self.warmup = float(sigmas), int(warmup)
        self._values: deque[float] = deque(maxlen=int(window))

    def observe(self, iteration: int, value: Optional[float]) -> Optional[Spike]:
        """The spike `value` is, if it is one; then it joins the window. None and non-finite values
        (NaN has an alert of its own) are neither judged nor kept. At log points only: the window's
        mean and spread are summed afresh (128 values, microseconds), so no rounding error builds up."""
        if value is None or not math.isfinite(value):
            return None
        spike, values = None, self._values
        if len(values) >= self.warmup:
            mean = math.fsum(values) / len(values)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
            if std > 0 and (value - mean) / std > self.sigmas:
                spike = Spike(int(iteration), float(value), mean, (value - mean) / std)
        values.append(float(value))
        return spike

    def restart(self) -> None:
        """Forget the window: what comes next is judged against nothing older (a new warm-up)."""
        self._values.clear()


LR_RISE = 1.1  # a logged learning rate this much above the last one is a (re)start of warm-up


class SpikeWatch:
    """The loss and the grad norm of one rank, judged at each log point. A rising learning rate
    (the warm-up of a schedule, or a warm restart) restarts both windows: a loss that rises with
    the learning rate is the schedule's doing, not a spike."""

    def __init__(self, window: int = WINDOW, sigmas: float = SIGMAS, warmup: int = WARMUP):
        self.loss = SpikeDetector(window, sigmas, warmup)
        self.grad_norm = SpikeDetector(window, sigmas, warmup)
        self._lr: Optional[float] = None

    def observe(self, iteration: int, loss: float, grad_norm: Optional[float],
                lr: Optional[float]) -> tuple[Optional[Spike], Optional[Spike]]:
        """(loss spike, grad-norm spike) of this log point, each None when it is none."""
        if lr is not None and math.isfinite(lr):
            if self._lr is not None and lr > self._lr * LR_RISE:
                self.loss.restart()
                self.grad_norm.restart()
            self._lr = lr
        return self.loss.observe(iteration, loss), self.grad_norm.observe(iteration, grad_norm)
