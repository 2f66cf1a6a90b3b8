"""TrainingMonitor: turns a training loop's events into metrics, history and status.

Any PyTorch loop can use it (not only nanogpt): call `run_started` once,
`iteration` after every optimizer step, `log` at log intervals with numbers
already on the host, `evaluated` after an eval, `run_ended` at the end. The
model arrives as plain data: a module tree built on the torch side
(`nanogpt_monitor.model_view.describe`), served as is by /api/model. Every
public method is guarded: an exception inside it is logged once per site,
counted in nanogpt_exporter_errors_total and swallowed, so the exporter can
never break training. It does no I/O on `iteration` (the per-step call) and
one flushed line per `log` when a metrics log is configured.

Serving is `exporter.server`; `serve()` here is the shortcut to it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import replace
from typing import Any, Iterator, Optional

from prometheus_client import CollectorRegistry

from .history import History
from .point import Point, csv_lines
from .metricslog import MetricsLog
from .devices import device_status
from .catalogue import INFO_KEYS, MAX_LOGGED_SCALARS
from .metrics import TrainingMetrics, create_metrics
from .server import MetricsServer
from .status import READ_SECONDS, snapshot
from .trend import DebiasedEma
from .version import VERSION

log = logging.getLogger(__name__)

def _guarded(method):
    """Run a public monitor method; on any exception log once per site, count, and return None."""

    @functools.wraps(method)
    def wrapper(self: "TrainingMonitor", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # the exporter must never raise into the training loop
            self.report_error(method.__name__, e)
            return None

    return wrapper


def _number(value: Any) -> Optional[float]:
    return None if value is None else float(value)  # TypeError/ValueError for anything else not numeric


class TrainingMonitor:
    """Metrics (on its own CollectorRegistry), bounded history and status of one training process."""

    def __init__(self, run_id: str = "run", rank: int = 0, registry: Optional[CollectorRegistry] = None,
                 metrics_log: Optional[str | os.PathLike] = None, history: Optional[History] = None):
        self.run_id, self.rank = str(run_id), int(rank)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: TrainingMetrics = create_metrics(self.registry, self.run_id, self.rank)
        self.history = history if history is not None else History()
        self.metrics_log = MetricsLog(metrics_log) if metrics_log is not None else None
        self._ema = DebiasedEma()
        self._pending_eval: Optional[tuple[int, float, float]] = None  # (iteration, train, val)
        self._last_iteration_time: Optional[float] = None
        self._errors_seen: set[tuple[str, str]] = set()
        self._changed = threading.Condition()
        self._generation = 0  # bumped on every change a stream client may want
        self.status_version = 0  # bumped when the status changes beyond a new point (state, eval)
        self._status: dict[str, Any] = {
            "world_size": 1, "state": "starting", "iteration": 0, "max_iterations": 0, "start_time": None,
            "end_time": None, "reason": "", "val_loss": None, "eval_train_loss": None, "best_val_loss": None,
            "parameters_total": None, "dataset": "", "device": "", "dtype": "", "last_checkpoint": None,
            "last_checkpoint_error": None, "tokens_per_iteration": None,
        }
        self._model_config: dict = {}
        self._parameters: dict = {}
        self._device_collectors: list = []
        self._model_tree: Optional[dict] = None
        self._scalars: dict[str, float] = {}

    # --- events from the training loop ---------------------------------------------------------

    @_guarded
    def run_started(self, max_iterations: int, world_size: int = 1, start_iteration: int = 0,
                    tokens_per_iteration: Optional[int] = None, model_config: Optional[dict] = None,
                    parameters: Optional[dict] = None, dataset: str = "", device: str = "", dtype: str = "",
                    config: Optional[dict] = None, start_time: Optional[float] = None,
                    run_id: Optional[str] = None, rank: Optional[int] = None, node: int = 0,
                    model_tree: Optional[dict] = None) -> None:
        """Once before the first iteration (after a resume too): the run's shape and the model.

        `parameters` maps component -> count ("total" among them); `model_tree` is the module tree
        of nanogpt_monitor.model_view.describe (plain dicts), shown on the page and in /api/model."""
        if (run_id is not None and str(run_id) != self.run_id) or (rank is not None and int(rank) != self.rank):
            self.report_error("run_started", ValueError(
                f"run_started for run {run_id} rank {rank} reached the monitor of run {self.run_id} rank {self.rank}"))
        m, start_time = self.metrics, time.time() if start_time is None else float(start_time)
        m.max_iterations.set(int(max_iterations))
        m.iteration.set(int(start_iteration))
        m.start_time.set(start_time)
        m.last_iteration_timestamp.set(start_time)  # so "no iteration for minutes" counts from the start
        self._model_config, self._parameters = dict(model_config or {}), dict(parameters or {})
        self._model_tree = model_tree if isinstance(model_tree, dict) else None
        for field, value in self._model_config.items():
            if isinstance(value, (bool, int, float)):
                m.set_config_field(field, float(value))
        for component, count in self._parameters.items():
            m.set_parameter_count(component, float(count))
        info = {"dataset": str(dataset), "device": str(device), "dtype": str(dtype),
                "world_size": str(int(world_size)), "node": str(int(node)), "version": VERSION}
        m.run_info.info({key: info[key] for key in INFO_KEYS})
        try:
            self._restore_history(int(start_iteration))
        except Exception as e:  # an unreadable metrics log must not keep the run from "running"
            self.report_error("run_started", e)
        self._update_status(
            state="running", world_size=int(world_size), iteration=int(start_iteration),
            max_iterations=int(max_iterations), start_time=start_time, dataset=str(dataset), device=str(device),
            dtype=str(dtype), parameters_total=self._parameters.get("total"),
            tokens_per_iteration=tokens_per_iteration, end_time=None, reason="")
        m.set_state("running")

    def _restore_history(self, start_iteration: int) -> None:
        """On (re)start, keep the logged points before the start iteration, from disk when logged there.

        A resumed loop redoes its checkpoint's iteration (nanoGPT saves before that step) and logs
        it anew; dropping the old point now means a live stream never holds a point it must replace."""
        if self.metrics_log is None:
            self.history.truncate(start_iteration - 1)
            return
        self.history.truncate(-1)
        self._ema = DebiasedEma()
        for point in self.metrics_log.rewrite(start_iteration - 1):
            self.history.append(point)
            if point.loss is not None and math.isfinite(point.loss):
                self.metrics.train_loss_ema.set(self._ema.update(point.loss))

    @_guarded
    def iteration(self, iteration: int, tokens: int, timestamp: Optional[float] = None) -> None:
        """After every optimizer step: host numbers only, no I/O (this is the per-step hot path)."""
        m = self.metrics
        timestamp = time.time() if timestamp is None else timestamp
        m.iteration.set(iteration)
        m.iterations.inc()
        m.tokens.inc(tokens)
        m.last_iteration_timestamp.set(timestamp)
        if self._last_iteration_time is not None:
            m.iteration_duration.observe(max(0.0, timestamp - self._last_iteration_time))
        self._last_iteration_time = timestamp
        self._status["iteration"] = iteration  # a single dict store: atomic under the GIL

    @_guarded
    def log(self, iteration: int, loss: float, lr: Optional[float] = None, step_seconds: Optional[float] = None,
            tokens_per_second: Optional[float] = None, grad_norm: Optional[float] = None,
            mfu: Optional[float] = None, elapsed_seconds: Optional[float] = None,
            timestamp: Optional[float] = None, scalars: Optional[dict] = None) -> None:
        """At a log interval: loss and rates the loop already has on the host (loss may be nan/inf).

        `scalars`: other values the training code logged (name -> number, e.g. Lightning's
        self.log), each exported as nanogpt_logged_scalar{key=...} and listed in /api/status."""
        m, loss = self.metrics, float(loss)
        timestamp = time.time() if timestamp is None else float(timestamp)
        if elapsed_seconds is None and self._status["start_time"] is not None:
            elapsed_seconds = timestamp - self._status["start_time"]
        point = Point(int(iteration), loss, _number(lr), _number(step_seconds), _number(tokens_per_second),
                      _number(elapsed_seconds), timestamp, _number(grad_norm), _number(mfu))
        m.train_loss.set(loss)
        if math.isfinite(loss):
            m.logged_loss.observe(loss)
            m.train_loss_ema.set(self._ema.update(loss))
        else:
            m.loss_nonfinite.inc()
        for gauge, value in ((m.learning_rate, point.lr), (m.grad_norm, point.grad_norm), (m.mfu, point.mfu)):
            if value is not None:
                gauge.set(value)
        if scalars:
            self._set_scalars(scalars)
        pending, self._pending_eval = self._pending_eval, None
        eval_values = {}
        if pending is not None and pending[0] == point.iteration:
            eval_values = {"eval_train_loss": pending[1], "val_loss": pending[2]}
        point = replace(point, loss_ema=self._ema.value, **eval_values)
        self.history.append(point)
        if self.metrics_log is not None:
            self.metrics_log.append(point)
        self._notify(status=False)

    def _set_scalars(self, scalars: dict) -> None:
        for name, value in scalars.items():
            name = str(name)
            if name not in self._scalars and len(self._scalars) >= MAX_LOGGED_SCALARS:
                raise ValueError(f"more than {MAX_LOGGED_SCALARS} logged value names; {name!r} is not exported")
            self._scalars[name] = float(value)
            self.metrics.logged_scalar[name].set(float(value))

    @_guarded
    def evaluated(self, iteration: int, train_loss: Optional[float] = None, val_loss: Optional[float] = None,
                  best_val_loss: Optional[float] = None, eval_seconds: Optional[float] = None,
                  timestamp: Optional[float] = None) -> None:
        """After an evaluation. Its losses join the history point logged at the same iteration.

        Either loss may be None: a framework that evaluates only the validation split (Hugging
        Face's Trainer) leaves the train split's figure as it was."""
        m, train_loss, val_loss = self.metrics, _number(train_loss), _number(val_loss)
        if train_loss is not None:
            m.eval_loss["train"].set(train_loss)
        if val_loss is not None:
            m.eval_loss["val"].set(val_loss)
        if eval_seconds is not None:
            m.eval_duration.set(float(eval_seconds))
        known = {key: value for key, value in (("eval_train_loss", train_loss), ("val_loss", val_loss),
                                               ("best_val_loss", _number(best_val_loss))) if value is not None}
        self._update_status(**known)
        amended = self.history.amend_last(int(iteration), eval_train_loss=train_loss, val_loss=val_loss)
        if amended is None:  # the usual order: eval first, then the log point of that iteration
            self._pending_eval = (int(iteration), train_loss, val_loss)
        elif self.metrics_log is not None:
            self.metrics_log.append(amended)  # read() lets this line replace the one before it
        self._notify(status=True)

    @_guarded
    def checkpoint_saved(self, iteration: int, path: str = "", seconds: Optional[float] = None,
                         timestamp: Optional[float] = None) -> None:
        """After a checkpoint was written."""
        timestamp = time.time() if timestamp is None else float(timestamp)
        self.metrics.last_checkpoint_timestamp.set(timestamp)
        self._update_status(last_checkpoint={"iteration": int(iteration), "path": str(path),
                                             "seconds": _number(seconds), "timestamp": timestamp})

    @_guarded
    def checkpoint_failed(self, iteration: int, path: str = "", error: str = "",
                          timestamp: Optional[float] = None) -> None:
        """After a checkpoint could not be written; the previous one is still the last good one."""
        self.metrics.checkpoint_failures.inc()
        timestamp = time.time() if timestamp is None else float(timestamp)
        self._update_status(last_checkpoint_error={"iteration": int(iteration), "path": str(path),
                                                   "error": str(error), "timestamp": timestamp})

    @_guarded
    def run_ended(self, iteration: int, state: str = "finished", reason: str = "",
                  timestamp: Optional[float] = None) -> None:
        """Once when the loop ends: state "finished" or "failed"."""
        if state not in ("finished", "failed"):
            raise ValueError(f"run_ended state must be finished or failed, not {state!r}")
        self.metrics.iteration.set(int(iteration))
        self.metrics.set_state(state)
        self._update_status(state=state, iteration=int(iteration), reason=str(reason),
                            end_time=time.time() if not timestamp else float(timestamp))

    def close(self) -> None:
        """Close the metrics log file (the metrics stay readable)."""
        if self.metrics_log is not None:
            self.metrics_log.close()

    def add_device_collector(self, collector) -> None:
        """Serve a per-device collector (families labelled `gpu`, e.g. nanogpt_monitor.gpu's) on
        /metrics, and the same figures per device in /api/status's `gpus`."""
        self.registry.register(collector)
        self._device_collectors.append(collector)

    # --- errors and change notification ------------------------------------------------------

    def report_error(self, site: str, error: Exception) -> None:
        """Count an exporter error and log it the first time this site fails this way; never raises."""
        try:
            self.metrics.exporter_errors.inc()
            key = (site, type(error).__name__)
            if key not in self._errors_seen:
                self._errors_seen.add(key)
                log.warning("exporter: %s failed (%s: %s); counted in nanogpt_exporter_errors_total, "
                            "further %s errors here are counted only", site, type(error).__name__, error,
                            type(error).__name__)
        except Exception:  # never let error reporting itself raise into training
            pass

    def _update_status(self, **values: Any) -> None:
        with self._changed:
            self._status.update(values)
        self._notify(status=True)

    def _notify(self, status: bool) -> None:
        with self._changed:
            self._generation += 1
            if status:
                self.status_version += 1
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        """Whether the run is training now (between run_started and run_ended)."""
        return self._status["state"] == "running"

    @property
    def generation(self) -> int:
        return self._generation

    def wait_for_change(self, generation: int, timeout: float, stop: Optional[threading.Event] = None) -> int:
        """Block until the generation differs from `generation`, `stop` is set (checked under the same
        lock wake_waiters notifies with, so a waiter that read the generation after a wake-up still
        ends) or `timeout` s pass; returns the current generation."""
        with self._changed:
            self._changed.wait_for(lambda: self._generation != generation or (stop is not None and stop.is_set()),
                                   timeout=timeout)
            return self._generation

    def wake_waiters(self) -> None:
        """Wake every thread in wait_for_change (the server does this when it shuts down)."""
        self._notify(status=False)

    # --- what the server reads ---------------------------------------------------------------

    @_guarded
    def status(self, now: Optional[float] = None) -> dict:
        """The /api/status snapshot: state, latest figures, rates, ETA, trend and window mean."""
        with self._changed:
            fields = dict(self._status)
        answer = snapshot(self.run_id, self.rank, fields, self.history.tail(READ_SECONDS), self._ema.value,
                          time.time() if now is None else now)
        answer["gpus"] = device_status(self._device_collectors)
        answer["scalars"] = dict(self._scalars)
        return answer

    def model(self) -> dict:
        """The /api/model answer: model config, parameter counts and the module tree (None until known)."""
        return {"model_config": self._model_config, "parameters": self._parameters, "tree": self._model_tree}

    def csv_lines(self) -> Iterator[str]:
        """The whole logged history as CSV lines: from the metrics log when there is one (complete
        at full resolution, across resumes), else from memory."""
        if self.metrics_log is not None and self.metrics_log.path.is_file():
            return csv_lines(self.metrics_log.read())
        return self.history.csv_lines()

    def serve(self, host: str = "127.0.0.1", port: int = 0, **options: Any):
        """Start the HTTP server for this monitor in a daemon thread; returns a MetricsServer."""
        return MetricsServer(self, host=host, port=port, **options)

