"""TrainingMonitor: turns a training loop's events into recorded figures, in the training process.

Any PyTorch loop can use it: `run_started` once, `iteration` after every optimizer step, `log` at
log intervals with numbers already on the host, `evaluated` after an eval, `run_ended` at the end.
It only records, into one run directory: every metric into this rank's shared mmap files (a few
doubles per `iteration`), each change the live page shows as a journal line, each logged point
also as a metrics-log line. It opens no socket and starts no thread; the monitor process
(`serve()`) reads the directory and answers HTTP. Every public method is guarded: an exception
inside it is logged once per site, counted in nanogpt_exporter_errors_total and swallowed, so
monitoring can never break training.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from . import spikes
from .catalogue import INFO_KEYS, MAX_LOGGED_SCALARS
from .phases import WallClock, process_start_time, redone_seconds
from .cli import READY_FILE
from .devices import device_status
from .journal import JournalWriter, pid_namespace, run_directory
from .launch import MonitorProcess
from .metrics import TrainingMetrics, create_metrics
from .metricslog import MetricsLog
from .point import Point
from .samples import Sample
from .shared import SharedFiles
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
    """The recorded figures of one training process (one rank), in a run directory the monitor serves.

    `directory`: the run directory (default: exporter.journal.run_directory(run_id, node), shared by
    every rank of the run on this node); `metrics_log`: a JSON-lines file of every logged point
    at full resolution (CSV export, resumes); `spike_window`, `spike_sigmas`: how a loss or grad-norm
    spike is judged (exporter.spikes); `startup_since`: unix time the startup phase of
    nanogpt_time_seconds_total begins (default: this process's start, exporter.phases)."""

    def __init__(self, run_id: str = "run", rank: int = 0, directory: Optional[str | os.PathLike] = None,
                 metrics_log: Optional[str | os.PathLike] = None, node: int = 0,
                 spike_window: int = spikes.WINDOW, spike_sigmas: float = spikes.SIGMAS,
                 startup_since: Optional[float] = None):
        self.run_id, self.rank, self.node = str(run_id), int(rank), int(node)
        self._spikes = spikes.SpikeWatch(spike_window, spike_sigmas, min(spikes.WARMUP, spike_window))
        self.directory = Path(directory) if directory is not None else run_directory(self.run_id, self.node)
        self._default_directory = directory is None  # ours to tidy when nobody serves it
        self.files = SharedFiles(self.directory, f"rank{self.rank}")
        self.files.remove()  # what an earlier process of this rank left: this one counts from zero
        self.metrics: TrainingMetrics = create_metrics(self.files, self.run_id, self.rank)
        phase = self.metrics.time
        self._startup, self._step, self._data_wait = phase["startup"], phase["step"], phase["data_wait"]
        if startup_since is None:
            startup_since = process_start_time() or time.time()
        self._clock = WallClock(startup_since)
        self.journal = JournalWriter(self.directory, self.rank)
        self.journal.write("opened", run_id=self.run_id, rank=self.rank, pid=os.getpid(),
                           pid_namespace=pid_namespace(), time=time.time())
        self.metrics_log = MetricsLog(metrics_log) if metrics_log is not None else None
        self._ema = DebiasedEma()
        self._pending_eval: Optional[tuple[int, float, float]] = None  # (iteration, train, val)
        self._last_point: Optional[Point] = None
        self._last_iteration_time: Optional[float] = None
        self._start_time: Optional[float] = None
        self._errors_seen: set[tuple[str, str]] = set()
        self._device_collectors: list = []
        self._scalars: set[str] = set()
        self._state = "starting"
        self.server = None  # the monitor process serve() started, if any

    # --- events from the training loop ---------------------------------------------------------

    @_guarded
    def run_started(self, max_iterations: int, world_size: int = 1, start_iteration: int = 0,
                    tokens_per_iteration: Optional[int] = None, model_config: Optional[dict] = None,
                    parameters: Optional[dict] = None, dataset: str = "", device: str = "", dtype: str = "",
                    config: Optional[dict] = None, start_time: Optional[float] = None,
                    run_id: Optional[str] = None, rank: Optional[int] = None, node: Optional[int] = None,
                    model_tree: Optional[dict] = None) -> None:
        """Once before the first iteration (after a resume too): the run's shape and the model.

        `parameters` maps component -> count ("total" among them); `model_tree` is the module tree
        of nanogpt_monitor.model_view.describe (plain dicts), shown on the page and in /api/model."""
        if (run_id is not None and str(run_id) != self.run_id) or (rank is not None and int(rank) != self.rank):
            self.report_error("run_started", ValueError(
                f"run_started for run {run_id} rank {rank} reached the monitor of run {self.run_id} rank {self.rank}"))
        m, start_time = self.metrics, time.time() if start_time is None else float(start_time)
        self._start_time = start_time
        m.max_iterations.set(int(max_iterations))
        m.iteration.set(int(start_iteration))
        m.start_time.set(start_time)
        m.last_iteration_timestamp.set(start_time)  # so "no iteration for minutes" counts from the start
        model_config, parameters = dict(model_config or {}), dict(parameters or {})
        for field, value in model_config.items():
            if isinstance(value, (bool, int, float)):
                m.set_config_field(field, float(value))
        for component, count in parameters.items():
            m.set_parameter_count(component, float(count))
        node = self.node if node is None else int(node)
        info = {"dataset": str(dataset), "device": str(device), "dtype": str(dtype),
                "world_size": str(int(world_size)), "node": str(node), "version": VERSION}
        self.journal.write("model", model_config=model_config, parameters=parameters,
                           tree=model_tree if isinstance(model_tree, dict) else None)
        self.journal.write("info", info={key: info[key] for key in INFO_KEYS})
        try:
            self._restore_history(int(start_iteration))
        except Exception as e:  # an unreadable metrics log must not keep the run from "running"
            self.report_error("run_started", e)
        self._update_status(
            state="running", world_size=int(world_size), iteration=int(start_iteration),
            max_iterations=int(max_iterations), start_time=start_time, dataset=str(dataset), device=str(device),
            dtype=str(dtype), parameters_total=parameters.get("total"),
            tokens_per_iteration=tokens_per_iteration, end_time=None, reason="")
        self._state = "running"
        m.set_state("running")
        if self._device_collectors:
            self._sample_devices()  # the devices' figures from the start, not only from the first log point

    def _restore_history(self, start_iteration: int) -> None:
        """On (re)start, keep the logged points before the start iteration, from disk when logged there.

        A resumed loop redoes its checkpoint's iteration (nanoGPT saves before that step) and logs
        it anew; dropping the old point now means a live stream never holds a point it must replace."""
        self._last_point = None
        if self.metrics_log is None:
            self.journal.write("truncate", through=start_iteration - 1)
            return
        self._ema = DebiasedEma()
        kept, redone = self.metrics_log.rewrite(start_iteration - 1)
        self.metrics.time["lost"].inc(redone_seconds(redone))
        for point in kept:
            if point.loss is not None and math.isfinite(point.loss):
                self.metrics.train_loss_ema.set(self._ema.update(point.loss))
        self._last_point = kept[-1] if kept else None
        self.journal.write("history", metrics_log=str(self.metrics_log.path.resolve()), through=start_iteration - 1)

    @_guarded
    def iteration(self, iteration: int, tokens: int, timestamp: Optional[float] = None, data_seconds: float = 0.0,
                  sync_seconds: Optional[float] = None) -> None:
        """After every optimizer step: host numbers only, a few shared-memory writes (the hot path).

        `data_seconds`: host time this step spent getting its batches (data_wait);
        `sync_seconds`: of the step, time waiting in the gradient all-reduce, where measured."""
        m = self.metrics
        timestamp = time.time() if timestamp is None else timestamp
        m.iteration.set(iteration)
        m.iterations.inc()
        m.tokens.inc(tokens)
        m.last_iteration_timestamp.set(timestamp)
        if self._last_iteration_time is not None:
            m.iteration_duration.observe(max(0.0, timestamp - self._last_iteration_time))
        self._last_iteration_time = timestamp
        startup, data_wait, step = self._clock.iteration(timestamp, data_seconds)
        if startup:
            self._startup.inc(startup)
        self._data_wait.inc(data_wait)
        self._step.inc(step)
        if sync_seconds is not None:
            m.allreduce_wait.inc(max(0.0, sync_seconds))

    def _spent(self, phase: str, seconds: Optional[float]) -> None:
        """Seconds an eval or a save reported: counted in its phase, left out of the next step."""
        if seconds is not None and seconds > 0:
            self.metrics.time[phase].inc(float(seconds))
            self._clock.set_aside(float(seconds))

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
        if elapsed_seconds is None and self._start_time is not None:
            elapsed_seconds = timestamp - self._start_time
        point = Point(int(iteration), loss, _number(lr), _number(step_seconds), _number(tokens_per_second),
                      _number(elapsed_seconds), timestamp, _number(grad_norm), _number(mfu))
        m.train_loss.set(loss)
        if math.isfinite(loss):
            m.logged_loss.observe(loss)
            m.train_loss_ema.set(self._ema.update(loss))
        else:
            if not m.loss_nonfinite.get():
                m.first_nonfinite_iteration.set(point.iteration)
            m.loss_nonfinite.inc()
        for gauge, value in ((m.learning_rate, point.lr), (m.grad_norm, point.grad_norm), (m.mfu, point.mfu)):
            if value is not None:
                gauge.set(value)
        self._judge_spikes(point)
        if scalars:
            self._set_scalars(scalars)
        pending, self._pending_eval = self._pending_eval, None
        eval_values = {}
        if pending is not None and pending[0] == point.iteration:
            eval_values = {"eval_train_loss": pending[1], "val_loss": pending[2]}
        self._append(replace(point, loss_ema=self._ema.value, **eval_values))
        if self._device_collectors:
            self._sample_devices()
        if self.server is not None:
            self.server.check()  # a monitor that died comes back, once

    def _judge_spikes(self, point: Point) -> None:
        loss_spike, grad_spike = self._spikes.observe(point.iteration, point.loss, point.grad_norm, point.lr)
        for spike, counter, field in ((loss_spike, self.metrics.loss_spikes, "last_loss_spike"),
                                      (grad_spike, self.metrics.grad_norm_spikes, "last_grad_norm_spike")):
            if spike is not None:
                counter.inc()
                self._update_status(**{field: {"iteration": spike.iteration, "value": spike.value,
                                               "mean": spike.mean, "sigmas": spike.sigmas}})

    def _append(self, point: Point) -> None:
        """A point (new, or the newest amended) to the journal and the metrics log."""
        self._last_point = point
        self.journal.write_point(point.json)
        if self.metrics_log is not None:
            self.metrics_log.append(point)  # read() lets an amended line replace the one before it

    def _set_scalars(self, scalars: dict) -> None:
        """Export each value by name; a name beyond MAX_LOGGED_SCALARS is counted as an error and
        left out, and the rest of the log point still counts."""
        values, refused = {}, []
        for name, value in scalars.items():
            name = str(name)
            if name not in self._scalars and len(self._scalars) >= MAX_LOGGED_SCALARS:
                refused.append(name)
                continue
            value = float(value)
            self._scalars.add(name)
            values[name] = value
            self.metrics.logged_scalar[name].set(value)
        self.journal.write("scalars", scalars=values)
        if refused:
            self.report_error("log", ValueError(
                f"more than {MAX_LOGGED_SCALARS} logged value names; {', '.join(map(repr, refused))} not exported"))

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
            self._spent("eval", float(eval_seconds))
        known = {key: value for key, value in (("eval_train_loss", train_loss), ("val_loss", val_loss),
                                               ("best_val_loss", _number(best_val_loss))) if value is not None}
        self._update_status(**known)
        last = self._last_point
        if last is not None and last.iteration == int(iteration):
            self._append(replace(last, eval_train_loss=train_loss, val_loss=val_loss))
        else:  # the usual order: eval first, then the log point of that iteration
            self._pending_eval = (int(iteration), train_loss, val_loss)

    @_guarded
    def sample(self, iteration: int, text: str, prompt: str = "", seconds: Optional[float] = None,
               timestamp: Optional[float] = None) -> None:
        """What the model wrote at an evaluation, for the page and /api/samples: untrusted text,
        cut to exporter.samples.MAX_CHARS; kept in the metrics log beside the points."""
        sample = Sample.bounded(iteration, text, prompt, time.time() if timestamp is None else timestamp, seconds)
        self._spent("eval", _number(seconds))  # written at an evaluation, and timed out of the step like it
        self.journal.write("sample", **sample.to_json())
        if self.metrics_log is not None:
            self.metrics_log.append_sample(sample)

    @_guarded
    def checkpoint_saved(self, iteration: int, path: str = "", seconds: Optional[float] = None,
                         timestamp: Optional[float] = None) -> None:
        """After a checkpoint was written."""
        timestamp = time.time() if timestamp is None else float(timestamp)
        self.metrics.last_checkpoint_timestamp.set(timestamp)
        self._spent("checkpoint", _number(seconds))
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
        self._state = state
        self._update_status(state=state, iteration=int(iteration), reason=str(reason),
                            end_time=time.time() if not timestamp else float(timestamp))

    def close(self) -> None:
        """Stop the monitor process serve() started, if any, and close the metrics log and journal.
        Records in the default directory that no monitor serves (none was started) are removed."""
        if self.server is not None:
            self.server.close()
        if self.metrics_log is not None:
            self.metrics_log.close()
        self.journal.close()
        if self._default_directory and self.server is None and not (self.directory / READY_FILE).exists():
            self.discard()

    def discard(self) -> None:
        """Remove what this rank recorded (its files, a failed monitor's answer, the directory if
        nothing else is in it): for a run that will never be served (a port in use)."""
        for record in (self.metrics_log, self.files, self.journal):
            if record is not None:
                record.close()
        for path in (*self.files.paths(), self.journal.path, self.directory / READY_FILE):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:  # not empty: another rank records here
            pass

    def add_device_collector(self, collector) -> None:
        """Record a per-device collector's figures (families labelled `gpu`, e.g. nanogpt_monitor.gpu's)
        at every log point: its samples as gauges, the same figures per device in /api/status's `gpus`."""
        self._device_collectors.append(collector)

    def _sample_devices(self) -> None:
        families = [family for collector in self._device_collectors for family in collector.collect()]
        for family in families:
            for sample in family.samples:
                self.metrics.device_value(family.type, family.name, sample.name, family.documentation,
                                          sample.labels).set(sample.value)
        self.journal.write("devices", gpus=device_status(families))

    # --- errors and state ----------------------------------------------------------------------

    def report_error(self, site: str, error: Exception) -> None:
        """Count an exporter error, log it the first time this site fails this way; never raises."""
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
        self.journal.write("status", fields=values)

    @property
    def running(self) -> bool:
        """Whether the run is training now (between run_started and run_ended)."""
        return self._state == "running"

    def serve(self, host: str = "127.0.0.1", port: int = 0, **options: Any):
        """Start the monitor process for this run's directory (once per node); returns its
        exporter.launch.MonitorProcess, kept as `server` too. It removes a default directory."""
        options.setdefault("remove_dir", self._default_directory)
        self.server = MonitorProcess(self.directory, host=host, port=port, **options)
        return self.server
