"""Where a rank's wall clock goes: each stretch of it attributed to one phase, from the loop's events.

The phases (exporter.catalogue.PHASES) and how each second is found:
- startup: from the process start to the end of the first iteration (imports, data, model
  build, torch.compile's first step), less the evaluations and checkpoints reported before it;
- eval, checkpoint: the seconds an evaluation (and its sample) or a save reports, when it does;
- data_wait: the host time the loop reports for getting an iteration's batches;
- step: the rest of the time between consecutive iterations (forward, backward, all-reduce,
  optimizer);
- lost: on a resume, the time the iterations after the checkpoint took before the crash, redone
  now (their logged timestamps, exporter.metricslog; to the last logged point, not beyond).

So the phases add up to the wall clock from the process start to the last iteration (what came
after it is counted when the next iteration or report arrives), and `lost` on top, once, at a
resume. Nothing is estimated: a phase the loop does not report (data wait under a framework
without a hook for it) is inside `step`, and docs/metrics.md says where.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from .point import Point


def process_start_time(pid: int | str = "self") -> Optional[float]:
    """Unix time the process started, from /proc (as prometheus-client's process collector reads
    it); None off Linux."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces and ")"
        with open("/proc/stat", "rb") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def redone_seconds(dropped: Iterable[Point]) -> float:
    """The wall time of iterations a resume redoes, from the logged points it dropped: the span
    between the first and last of them, plus the first one's own step (it too is redone)."""
    stamped = [p for p in dropped if p.timestamp is not None]
    if not stamped:
        return 0.0
    first, last = min(stamped, key=lambda p: p.iteration), max(stamped, key=lambda p: p.iteration)
    return max(0.0, last.timestamp - first.timestamp) + (first.step_seconds or 0.0)


class WallClock:
    """Splits the time between consecutive iterations into phases (see the module docstring).

    `since`: where the first stretch begins (the process start). `set_aside(seconds)` notes time
    already counted in another phase (an eval, a save) so the next stretch leaves it out."""

    def __init__(self, since: float):
        self._since = float(since)
        self._set_aside = 0.0
        self._started = False

    def set_aside(self, seconds: float) -> None:
        self._set_aside += max(0.0, float(seconds))

    def iteration(self, timestamp: float, data_seconds: float = 0.0) -> tuple[float, float, float]:
        """(startup, data_wait, step) seconds of the stretch ending at this iteration's unix
        `timestamp`; the first stretch is all startup."""
        stretch = max(0.0, timestamp - self._since - self._set_aside)
        self._since, self._set_aside = max(self._since, timestamp), 0.0
        if not self._started:
            self._started = True
            return stretch, 0.0, 0.0
        data = min(max(0.0, data_seconds), stretch)
        return 0.0, data, stretch - data
