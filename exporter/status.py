"""The /api/status snapshot: a run's latest figures, rate, ETA, trend and window mean.

`snapshot()` is a pure function of what the monitor holds (its status fields,
the newest logged points, the smoothed loss) and the clock: the same numbers in
give the same answer out, so tests call it with a fixed `now`.

Deliberately not here: holding or changing state (exporter.monitor), the trend
and window-mean definitions (exporter.trend), serving or caching the answer
(exporter.server and the routes).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from . import trend
from .point import Point

RATE_WINDOW_SECONDS = 60.0  # iterations/s over the last minute, like rate(nanogpt_iterations_total[1m])
READ_SECONDS = 2 * trend.WINDOW_SECONDS  # how far back before the newest point a snapshot reads (History.tail)


def snapshot(run_id: str, rank: int, fields: dict[str, Any], points: Sequence[Point], loss_ema: Optional[float],
             now: float) -> dict:
    """The status answer from the monitor's status `fields`, the logged `points` (oldest first;
    only the newest two trend windows are read) and the smoothed loss, at unix time `now`."""
    s = fields
    last = points[-1] if points else None
    samples = trend_samples(points)
    loss_trend = trend.loss_trend(samples)
    ips = iterations_per_second(points)
    running = s["state"] == "running"
    eta = (s["max_iterations"] - s["iteration"]) / ips if running and ips else None
    end = s["end_time"] or now
    return {
        "run_id": run_id, "rank": rank, "world_size": s["world_size"], "state": s["state"],
        "reason": s["reason"], "iteration": s["iteration"], "max_iterations": s["max_iterations"],
        "loss": _finite(last.loss) if last else None, "loss_ema": loss_ema,
        "val_loss": s["val_loss"], "eval_train_loss": s["eval_train_loss"], "best_val_loss": s["best_val_loss"],
        "lr": last.lr if last else None, "tokens_per_second": last.tokens_per_second if last else None,
        "iterations_per_second": ips, "step_seconds": last.step_seconds if last else None,
        "mfu": last.mfu if last else None, "eta_seconds": eta,
        "elapsed_seconds": end - s["start_time"] if s["start_time"] is not None else None,
        "start_time": s["start_time"], "parameters_total": s["parameters_total"], "dataset": s["dataset"],
        "device": s["device"], "dtype": s["dtype"], "last_checkpoint": s["last_checkpoint"],
        "last_checkpoint_error": s["last_checkpoint_error"],
        "trend": {"state": loss_trend.state, "improvement_ratio": loss_trend.improvement_ratio,
                  "window_seconds": loss_trend.window_seconds, "threshold": loss_trend.threshold},
        "average_loss": {"window_seconds": trend.WINDOW_SECONDS, "value": trend.average_loss(samples)},
    }


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def trend_samples(points: Sequence[Point]) -> list[tuple[float, float]]:
    """(timestamp, loss) of the newest points, back to the first at or before the newest timestamp
    minus two trend windows: all that loss_trend and average_loss read (they walk back from the
    newest and stop there), so a status costs O(window), not O(history) (100k points: 35 ms)."""
    samples: list[tuple[float, float]] = []
    for p in reversed(points):
        if p.timestamp is None:
            continue
        samples.append((p.timestamp, p.loss))
        if p.timestamp <= samples[0][0] - 2 * trend.WINDOW_SECONDS:
            break
    samples.reverse()
    return samples


def iterations_per_second(points: Sequence[Point]) -> Optional[float]:
    """Iterations per second over the logged points of the last minute (1/step_seconds when fewer than 2)."""
    if not points:
        return None
    last = points[-1]
    first = last
    for p in reversed(points):
        if p.timestamp is None or last.timestamp is None or p.timestamp < last.timestamp - RATE_WINDOW_SECONDS:
            break
        first = p
    if first is not last and last.timestamp > first.timestamp:
        return (last.iteration - first.iteration) / (last.timestamp - first.timestamp)
    return 1.0 / last.step_seconds if last.step_seconds else None
