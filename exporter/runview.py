"""One rank's run as the monitor process sees it: its journal replayed into status, history and model.

`RunView` reads the rank's journal from where it stopped and applies each event:

    opened    the process: run_id, rank, pid (a new process of the rank starts a new journal)
    model     model_config, parameters, tree (nanogpt_monitor.model_view's plain dicts)
    info      nanogpt_run_info's keys (dataset, device, dtype, world_size, node, version)
    status    fields of /api/status that changed (state, evals, checkpoints, the end)
    point     a logged point (a re-logged iteration replaces the points from it on)
    history   a (re)start: the points up to `through` are in the metrics log at `metrics_log`
    truncate  a (re)start without a metrics log: drop the points after `through`
    scalars   other logged values by name
    devices   per-device figures for /api/status's `gpus`
    sample    what the model wrote at an evaluation (exporter.samples)

The current iteration and the seconds by phase (goodput), which the trainer
writes every step, are read from the rank's shared files, so the page follows
the steps between log points. The status answer is `snapshot()`: a pure
function of the replayed fields, the newest points and the clock.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from . import trend
from .catalogue import BY_KEY, LABELS, PHASES
from .history import History
from .journal import JournalReader, journal_path
from .metrics import sample_name
from .metricslog import MetricsLog
from .point import Point, csv_lines
from .samples import Sample, Samples
from .shared import FILE_KINDS

log = logging.getLogger(__name__)

STATUS_DEFAULTS = {
    "world_size": 1, "state": "starting", "iteration": 0, "max_iterations": 0, "start_time": None,
    "end_time": None, "reason": "", "val_loss": None, "eval_train_loss": None, "best_val_loss": None,
    "parameters_total": None, "dataset": "", "device": "", "dtype": "", "last_checkpoint": None,
    "last_checkpoint_error": None, "tokens_per_iteration": None, "last_loss_spike": None,
    "last_grad_norm_spike": None,
}
RATE_WINDOW_SECONDS = 60.0  # iterations/s over the last minute, like rate(nanogpt_iterations_total[1m])
READ_SECONDS = 2 * trend.WINDOW_SECONDS  # how far back before the newest point a snapshot reads (History.tail)


class RunView:
    """The replayed state of one rank; `poll()` applies what its journal gained since the last poll."""

    def __init__(self, directory: Path, rank: int, report_error: Callable[[str, Exception], None]):
        self.directory, self.rank, self.report_error = Path(directory), int(rank), report_error
        self._reader = JournalReader(journal_path(directory, rank))
        self._reset()

    def _reset(self) -> None:
        self.run_id, self.pid, self.pid_namespace = "run", None, None
        self.history = History()
        self.samples = Samples()
        self.fields: dict[str, Any] = dict(STATUS_DEFAULTS)
        self.model_info: dict[str, Any] = {"model_config": {}, "parameters": {}, "tree": None}
        self.info: dict[str, str] = {}
        self.scalars: dict[str, Optional[float]] = {}
        self.gpus: list[dict] = []
        self.metrics_log: Optional[MetricsLog] = None
        self.status_version = 0  # bumped when the status changes beyond a new point

    # --- replaying the journal -----------------------------------------------------------------

    def poll(self) -> bool:
        """Apply the journal's new events; True when any changed what this view serves."""
        changed = False
        for event in self._reader.read_new():
            try:
                self.apply(event)
            except Exception as e:  # one bad line must not stop the replay of the rest
                self.report_error(f"journal rank{self.rank}", e)
            changed = True
        return changed

    def apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "reset":
            self._reset()
        elif kind == "opened":
            self.run_id, self.pid = str(event["run_id"]), int(event["pid"])
            self.pid_namespace = event.get("pid_namespace")
        elif kind == "model":
            self.model_info = {"model_config": event.get("model_config") or {},
                               "parameters": event.get("parameters") or {}, "tree": event.get("tree")}
        elif kind == "info":
            self.info = {str(k): str(v) for k, v in (event.get("info") or {}).items()}
        elif kind == "status":
            self.fields.update(event.get("fields") or {})
            self.status_version += 1
        elif kind == "point":
            self.history.append(_point(event["point"]))
        elif kind == "history":
            self._load_history(Path(event["metrics_log"]), int(event["through"]))
        elif kind == "truncate":
            self.history.truncate(int(event["through"]))
            self.samples.truncate(int(event["through"]))
        elif kind == "sample":
            self.samples.add(Sample.from_json(event))
            self.status_version += 1
        elif kind == "scalars":
            self.scalars.update(event.get("scalars") or {})
            self.status_version += 1
        elif kind == "devices":
            self.gpus = list(event.get("gpus") or [])
            self.status_version += 1

    def _load_history(self, path: Path, through: int) -> None:
        """A (re)start: the points the trainer kept in its metrics log (already cut at `through`)."""
        self.history.truncate(-1)
        self.metrics_log = MetricsLog(path)
        for point in self.metrics_log.read():
            if point.iteration <= through:
                self.history.append(_point_of(point))
        self.samples = Samples()
        for sample in self.metrics_log.samples():
            if sample.iteration <= through:
                self.samples.add(sample)

    def mark_dead(self, reason: str) -> bool:
        """The trainer's process is gone without reporting an end: the run failed. True if it was live."""
        if self.fields["state"] not in ("starting", "running"):
            return False
        self.fields.update(state="failed", reason=reason, end_time=time.time())
        self.status_version += 1
        return True

    @property
    def behind(self) -> bool:
        """Whether the journal holds more than the last poll read (a long run's, replayed in parts)."""
        return self._reader.behind

    # --- what the server reads ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.fields["state"] == "running"

    @property
    def ended(self) -> bool:
        return self.fields["state"] in ("finished", "failed")

    def _shared_values(self, kind: str) -> dict[str, float]:
        """Every value the trainer wrote in its shared file of a metric kind, by mmap key ({} before
        it made the file)."""
        path = self.directory / f"{FILE_KINDS[kind]}_rank{self.rank}.db"
        try:
            return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}
        except (OSError, ValueError):
            return {}

    def live_iteration(self) -> Optional[int]:
        """The iteration the trainer wrote last (every step), from its shared gauge file."""
        metric = BY_KEY["iteration"]
        key = mmap_key(metric.name, sample_name(metric), list(LABELS), [self.run_id, str(self.rank)], metric.help)
        value = self._shared_values("gauge").get(key)
        return int(value) if value is not None and math.isfinite(value) else None

    def time_seconds(self) -> Optional[dict[str, float]]:
        """nanogpt_time_seconds_total of this rank by phase, from its shared counter file, so the
        page follows every step without a journal line per step; None before the trainer made them."""
        metric = BY_KEY["time"]
        values, labelnames = self._shared_values("counter"), [*LABELS, metric.label]
        found = {phase: values.get(mmap_key(metric.name, sample_name(metric), labelnames,
                                            [self.run_id, str(self.rank), phase], metric.help))
                 for phase in PHASES}
        return found if None not in found.values() else None

    def status(self, now: Optional[float] = None) -> dict:
        """The /api/status snapshot: state, latest figures, rates, ETA, trend and window mean."""
        fields = dict(self.fields)
        if (iteration := self.live_iteration()) is not None:  # also where a killed trainer left off
            fields["iteration"] = max(iteration, fields["iteration"])
        last = self.history.last()
        answer = snapshot(self.run_id, self.rank, fields, self.history.tail(READ_SECONDS),
                          last.loss_ema if last is not None else None, time.time() if now is None else now)
        answer["time_seconds"] = time_seconds = self.time_seconds()
        answer["goodput"] = goodput(time_seconds)
        answer["gpus"] = self.gpus
        answer["scalars"] = dict(self.scalars)
        newest = self.samples.newest()
        answer["last_sample_iteration"] = newest.iteration if newest is not None else None
        return answer

    def model(self) -> dict:
        """The /api/model answer: model config, parameter counts and the module tree (None until known)."""
        return self.model_info

    def csv_lines(self) -> Iterator[str]:
        """The whole logged history as CSV lines: from the metrics log when there is one (complete
        at full resolution, across resumes), else from memory."""
        if self.metrics_log is not None and self.metrics_log.path.is_file():
            return csv_lines(self.metrics_log.read())
        return self.history.csv_lines()


# --- the /api/status answer -----------------------------------------------------------------------

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
        "last_loss_spike": s["last_loss_spike"], "last_grad_norm_spike": s["last_grad_norm_spike"],
        "trend": {"state": loss_trend.state, "improvement_ratio": loss_trend.improvement_ratio,
                  "window_seconds": loss_trend.window_seconds, "threshold": loss_trend.threshold},
        "average_loss": {"window_seconds": trend.WINDOW_SECONDS, "value": trend.average_loss(samples)},
    }


def goodput(time_seconds: Optional[dict[str, float]]) -> Optional[float]:
    """The step phase's share of a rank's wall clock counted so far (nanogpt:goodput_ratio:run for
    one rank); None before anything is counted (the first iteration ends the startup)."""
    total = sum(time_seconds.values()) if time_seconds else 0.0
    return time_seconds["step"] / total if total > 0 else None


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


def _point(data: dict) -> Point:
    return _point_of(Point.from_json(data))


def _point_of(point: Point) -> Point:
    """JSON has no NaN: a non-finite loss comes back as null, and is NaN again here."""
    if point.loss is None:
        from dataclasses import replace

        return replace(point, loss=math.nan)
    return point
