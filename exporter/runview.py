"""One rank's run as the monitor process sees it: its journal replayed into status, history and model.

`RunView` reads the rank's journal (exporter.journal) from where it stopped and
applies each event:

    opened    the process: run_id, rank, pid (a new process of the rank starts a new journal)
    model     model_config, parameters, tree (nanogpt_monitor.model_view's plain dicts)
    info      nanogpt_run_info's keys (dataset, device, dtype, world_size, node, version)
    status    fields of /api/status that changed (state, evals, checkpoints, the end)
    point     a logged point (a re-logged iteration replaces the points from it on)
    history   a (re)start: the points up to `through` are in the metrics log at `metrics_log`
    truncate  a (re)start without a metrics log: drop the points after `through`
    scalars   other logged values by name
    devices   per-device figures for /api/status's `gpus`

Its status(), model(), history and csv_lines() are what the page and the API
serve. The current iteration, which the trainer writes every step, is read
from the rank's shared file, so the page counts steps between log points.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from .catalogue import BY_KEY, LABELS
from .history import History
from .journal import JournalReader, journal_path
from .metricslog import MetricsLog
from .point import Point, csv_lines
from .shared import FILE_KINDS
from .status import READ_SECONDS, snapshot

log = logging.getLogger(__name__)

STATUS_DEFAULTS = {
    "world_size": 1, "state": "starting", "iteration": 0, "max_iterations": 0, "start_time": None,
    "end_time": None, "reason": "", "val_loss": None, "eval_train_loss": None, "best_val_loss": None,
    "parameters_total": None, "dataset": "", "device": "", "dtype": "", "last_checkpoint": None,
    "last_checkpoint_error": None, "tokens_per_iteration": None,
}


class RunView:
    """The replayed state of one rank; `poll()` applies what its journal gained since the last poll."""

    def __init__(self, directory: Path, rank: int, report_error: Callable[[str, Exception], None]):
        self.directory, self.rank, self.report_error = Path(directory), int(rank), report_error
        self._reader = JournalReader(journal_path(directory, rank))
        self._reset()

    def _reset(self) -> None:
        self.run_id, self.pid, self.pid_namespace = "run", None, None
        self.history = History()
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

    def live_iteration(self) -> Optional[int]:
        """The iteration the trainer wrote last (every step), from its shared gauge file."""
        metric = BY_KEY["iteration"]
        key = mmap_key(metric.name, metric.name, list(LABELS), [self.run_id, str(self.rank)], metric.help)
        path = self.directory / f"{FILE_KINDS['gauge']}_rank{self.rank}.db"
        try:
            for found, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                if found == key:
                    return int(value) if math.isfinite(value) else None
        except (OSError, ValueError):
            return None
        return None

    def status(self, now: Optional[float] = None) -> dict:
        """The /api/status snapshot: state, latest figures, rates, ETA, trend and window mean."""
        fields = dict(self.fields)
        if (iteration := self.live_iteration()) is not None:  # also where a killed trainer left off
            fields["iteration"] = max(iteration, fields["iteration"])
        last = self.history.last()
        answer = snapshot(self.run_id, self.rank, fields, self.history.tail(READ_SECONDS),
                          last.loss_ema if last is not None else None, time.time() if now is None else now)
        answer["gpus"] = self.gpus
        answer["scalars"] = dict(self.scalars)
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


def _point(data: dict) -> Point:
    return _point_of(Point.from_json(data))


def _point_of(point: Point) -> Point:
    """JSON has no NaN: a non-finite loss comes back as null, and is NaN again here."""
    if point.loss is None:
        from dataclasses import replace

        return replace(point, loss=math.nan)
    return point
