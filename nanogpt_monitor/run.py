"""MonitoredRun: the one adapter from a training loop to exporter.TrainingMonitor.

Our trainer (nanogpt.cli), the Hugging Face and Lightning callbacks and hand-written loops all
go through it. It owns what every loop needs once: the run id shared by the ranks, the rank
rule (local rank 0 starts the node's monitor process and prints `metrics: URL`), step time and
tokens/s between log points (evaluations and saves left out), linger, and the guard that keeps
monitoring errors out of training (logged, counted in nanogpt_exporter_errors_total).

A train loss's hops to /metrics: train() -> SafeObserver.on_log (guard) -> cli.MonitorObserver.on_log
-> MonitoredRun.log -> TrainingMonitor.log, which writes a double into the rank's mmap file; the
monitor process reads that file at each scrape. A hand-written loop starts at MonitoredRun.log.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from exporter import ServeError, TrainingMonitor, WebConfigError, load_web_config, spikes
from exporter.journal import generate_run_id

from .gpu import register_gpu_collector
from .model_view import components, config_fields, describe

__all__ = ["MonitoredRun", "ProcessRank", "generate_run_id", "guarded_hook", "process_rank", "shared_run_id"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessRank:
    """Where this process sits in a launch (torchrun, accelerate); alone: rank 0 of 1 on node 0."""

    rank: int = 0
    local_rank: int = 0  # on this node; local rank 0 starts the node's monitor
    world_size: int = 1
    node: int = 0  # the node's rank (torchrun's GROUP_RANK)
    launched: bool = False  # RANK and WORLD_SIZE are set: a launcher started this process

    @property
    def prefix(self) -> str:
        """What this process's lines start with: "[rank R] " under a launcher, else nothing."""
        return f"[rank {self.rank}] " if self.launched else ""


def process_rank() -> ProcessRank:
    """This process's place in the run, from the environment a launcher sets."""
    env = os.environ
    return ProcessRank(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
                       world_size=int(env.get("WORLD_SIZE", 1)), node=int(env.get("GROUP_RANK", 0) or 0),
                       launched="RANK" in env and "WORLD_SIZE" in env)


def shared_run_id(run_id: Optional[str] = None) -> str:
    """The given id, else one that rank 0 generates and, in a process group, sends to every rank
    (a collective: every rank calls it at the same point)."""
    if run_id:
        return str(run_id)
    run_id = generate_run_id()
    import torch.distributed as dist  # only here: the rest of this module needs no torch

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [run_id]
        dist.broadcast_object_list(box, src=0)
        run_id = box[0]
    elif process_rank().world_size > 1:
        log.warning("nanogpt_monitor: no run_id and no process group yet; ranks will not share a run_id")
    return run_id


def _guarded(method):
    """Log and count an exception of a MonitoredRun method instead of raising it into training."""

    @functools.wraps(method)
    def wrapper(self: "MonitoredRun", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # monitoring must never break the training it watches
            self.report_error(method.__name__, e)
            return None

    return wrapper


def guarded_hook(method):
    """For a framework adapter's hook (an object with a `run`): log and count its exceptions on
    that run instead of raising them into training. Only ServeError (port taken) passes: it comes
    from the hook that starts the run, before training starts."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except ServeError:
            raise
        except Exception as e:  # monitoring must never break the training it watches
            self.run.report_error(method.__name__, e)
            return None

    return wrapper


def _rank_log(path: Optional[str | os.PathLike], rank: int) -> Optional[Path]:
    """Rank 0 logs to `path`, rank r > 0 beside it (metrics.jsonl -> metrics.rank<r>.jsonl)."""
    if path is None or rank == 0:
        return None if path is None else Path(path)
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _sleep(seconds: float) -> None:
    while seconds > 0:  # time.sleep takes no infinity
        time.sleep(min(seconds, 3600.0))
        seconds -= 3600.0


class MonitoredRun:
    """This process's recorded figures and, on local rank 0, the node's monitor process. Use it as
    `with MonitoredRun(...) as run:` (the block's end is the run's end) or call end() and close()."""

    def __init__(self, run_id: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
                 metrics_log: Optional[str | os.PathLike] = None, linger_seconds: float = 0.0,
                 web_config: Optional[str | os.PathLike] = None, directory: Optional[str | os.PathLike] = None,
                 external: bool = False, remove_dir: Optional[bool] = None, devices: Optional[Iterable] = None,
                 spike_window: int = spikes.WINDOW, spike_sigmas: float = spikes.SIGMAS):
        """`port`: the node's monitor's (0 = any free port); `linger_seconds`: keep serving that long
        at close(), and if the process dies; `web_config`: basic auth / TLS file; `directory`: the run
        directory (default: one per run id under the temp dir, removed at the end unless
        `remove_dir=False`); `external`: a monitor started separately serves `directory`, none is
        started here; `devices`: GPUs whose health to record (nanogpt_monitor.gpu); `metrics_log`:
        rank 0's JSON-lines log of every point (rank r writes NAME.rank<r>.jsonl beside it);
        `spike_window`, `spike_sigmas`: how a loss or grad-norm spike is judged (exporter.spikes)."""
        self.run_id, self.host, self.port = run_id, host, int(port)
        self.metrics_log, self.linger_seconds, self.web_config = metrics_log, float(linger_seconds), web_config
        self.directory, self.external, self.devices = directory, external, devices
        self.spike_window, self.spike_sigmas = int(spike_window), float(spike_sigmas)
        self.remove_dir = directory is None if remove_dir is None else remove_dir
        self.monitor: Optional[TrainingMonitor] = None
        self.server = None
        self.prefix = ""
        self.iteration = 0
        self.started = self.ended = self.closed = False
        self.best_val_loss = math.inf
        self._span_start = self._span_tokens = self._span_steps = self._span_excluded = 0

    def __enter__(self) -> "MonitoredRun":
        self.open()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.end(state="finished")
        else:  # an exception leaving the block ends the run failed, and goes on its way
            self.end(state="failed", reason=f"{type(error).__name__}: {error}")
        self.close()

    def report_error(self, site: str, error: Exception) -> None:
        """Count (nanogpt_exporter_errors_total) and log once an error of monitoring code; never raises."""
        if self.monitor is not None:
            self.monitor.report_error(f"nanogpt_monitor.{site}", error)
        else:
            log.warning("nanogpt_monitor: %s failed: %s: %s", site, type(error).__name__, error)

    @property
    def url(self) -> Optional[str]:
        """http://HOST:PORT of the node's monitor, on the local rank that started it."""
        return self.server.url if self.server is not None else None

    def open(self) -> TrainingMonitor:
        """Record this rank; on local rank 0 (unless the monitor is external) start the node's monitor
        and print `metrics: URL`. ServeError (port taken, bad web config) before training starts."""
        if self.monitor is not None:
            return self.monitor
        where, run_id = process_rank(), shared_run_id(self.run_id)  # a collective first: every rank gets here
        serves = where.local_rank == 0 and not self.external  # one monitor per node serves every rank
        if serves and self.web_config:
            try:
                load_web_config(self.web_config)  # a bad file is one line now, not the monitor's exit
            except WebConfigError as e:
                raise ServeError(str(e)) from None
        monitor = TrainingMonitor(run_id=run_id, rank=where.rank, directory=self.directory,
                                  metrics_log=_rank_log(self.metrics_log, where.rank), node=where.node,
                                  spike_window=self.spike_window, spike_sigmas=self.spike_sigmas)
        if serves:
            try:
                self.server = monitor.serve(host=self.host, port=self.port, web_config=self.web_config or None,
                                            linger=self.linger_seconds, remove_dir=self.remove_dir)
            except ServeError:
                monitor.discard()  # a run never served leaves nothing behind
                raise
            # printed, not logged: tests and users read it whatever the log level
            print(f"{where.prefix}metrics: {self.server.url}/metrics", flush=True)
        if self.devices is not None:
            register_gpu_collector(monitor, devices=list(self.devices))  # read at log points
        self.monitor, self.run_id, self.prefix = monitor, run_id, where.prefix
        atexit.register(self._at_exit)
        return monitor

    def start(self, max_iterations: int, model=None, start_iteration: int = 0,
              tokens_per_iteration: Optional[int] = None, dataset: str = "", device: str = "", dtype: str = "",
              model_config: Optional[dict] = None, world_size: Optional[int] = None,
              parameters: Optional[dict] = None, config: Optional[dict] = None,
              start_time: Optional[float] = None) -> TrainingMonitor:
        """Report the run's start (open() first if the block did not); describe `model` (any
        torch.nn.Module) for the page and, unless `parameters` are given, nanogpt_model_parameters.
        Once per process."""
        if self.started:
            raise RuntimeError("this MonitoredRun has already started")
        monitor = self.open()
        self.started = True
        self._report_start(max_iterations, model, start_iteration, tokens_per_iteration, dataset, device, dtype,
                           model_config, world_size or process_rank().world_size, parameters, config, start_time)
        return monitor

    @_guarded
    def _report_start(self, max_iterations, model, start_iteration, tokens_per_iteration, dataset, device, dtype,
                      model_config, world_size, parameters, config, start_time) -> None:
        tree = describe(model) if model is not None else None
        self.iteration = int(start_iteration)
        self._reset_span()
        self.monitor.run_started(
            max_iterations=int(max_iterations), world_size=int(world_size), start_iteration=int(start_iteration),
            tokens_per_iteration=tokens_per_iteration,
            model_config={**(config_fields(model) if model is not None else {}), **(model_config or {})},
            parameters=parameters if parameters is not None else components(tree) if tree else {},
            model_tree=tree, dataset=dataset, device=device, dtype=dtype, config=config, start_time=start_time)

    def _reset_span(self) -> None:
        self._span_start, self._span_tokens, self._span_steps, self._span_excluded = time.perf_counter(), 0, 0, 0.0

    def step(self, iteration: int, tokens: int = 0, timestamp: Optional[float] = None, data_seconds: float = 0.0,
             sync_seconds: Optional[float] = None) -> None:
        """After every optimizer step: host numbers only, no I/O (the per-step hot path).
        `data_seconds`: the host time this step spent getting its batches (the loop's own
        measure; 0 when it has none, and then that time counts as step); `sync_seconds`: of the
        step, the time spent waiting in the gradient all-reduce, where the loop measures it."""
        try:  # guarded inline, as _guarded does: a wrapper's call would double this method's cost
            self.iteration = iteration
            self._span_tokens += tokens
            self._span_steps += 1
            self.monitor.iteration(iteration, tokens, timestamp, data_seconds, sync_seconds)
        except Exception as e:  # monitoring must never break the training it watches
            self.report_error("step", e)

    @_guarded
    def log(self, iteration: int, loss: float, lr: Optional[float] = None, grad_norm: Optional[float] = None,
            scalars: Optional[dict] = None, step_seconds: Optional[float] = None,
            tokens_per_second: Optional[float] = None, mfu: Optional[float] = None) -> None:
        """At a log point: `loss` (a host float). Step time and tokens/s are the loop's own when it
        measured them, else this run's over the steps since the last log point, evaluations left out."""
        seconds = time.perf_counter() - self._span_start - self._span_excluded
        steps, tokens = self._span_steps, self._span_tokens
        self._reset_span()
        if step_seconds is None and steps and seconds > 0:
            step_seconds = seconds / steps
        if tokens_per_second is None and tokens and seconds > 0:
            tokens_per_second = tokens / seconds
        self.monitor.log(iteration=int(iteration), loss=float(loss), lr=lr, grad_norm=grad_norm,
                         step_seconds=step_seconds, tokens_per_second=tokens_per_second, mfu=mfu, scalars=scalars)

    @_guarded
    def evaluated(self, iteration: int, val_loss: Optional[float], train_loss: Optional[float] = None,
                  seconds: Optional[float] = None, best_val_loss: Optional[float] = None) -> None:
        """After an evaluation; its time is left out of the current span's step time. The best
        validation loss is kept here unless the loop keeps its own (`best_val_loss`, across resumes)."""
        if val_loss is not None and math.isfinite(val_loss):
            self.best_val_loss = min(self.best_val_loss, float(val_loss))
        if best_val_loss is None and math.isfinite(self.best_val_loss):
            best_val_loss = self.best_val_loss
        if seconds:
            self._span_excluded += float(seconds)
        self.monitor.evaluated(iteration=int(iteration), train_loss=train_loss, val_loss=val_loss,
                               best_val_loss=best_val_loss, eval_seconds=seconds)

    @_guarded
    def checkpoint_saved(self, iteration: int, path: str = "", seconds: Optional[float] = None) -> None:
        """After a checkpoint was written; its time is left out of the step time."""
        if seconds:
            self._span_excluded += float(seconds)
        self.monitor.checkpoint_saved(iteration=int(iteration), path=str(path), seconds=seconds)

    @_guarded
    def checkpoint_failed(self, iteration: int, path: str = "", error: str = "") -> None:
        """After a checkpoint could not be written (training goes on)."""
        self.monitor.checkpoint_failed(iteration=int(iteration), path=str(path), error=str(error))

    @_guarded
    def sample(self, iteration: int, text: str, prompt: str = "", seconds: Optional[float] = None) -> None:
        """What the model wrote (at an evaluation, say), for the page and /api/samples; `seconds`,
        the time generating it took, is left out of the step time."""
        if seconds:
            self._span_excluded += float(seconds)
        self.monitor.sample(iteration=int(iteration), text=str(text), prompt=str(prompt), seconds=seconds)

    @_guarded
    def end(self, iteration: Optional[int] = None, state: str = "finished", reason: str = "") -> None:
        """Once, when training ends ("finished" or "failed"); later calls do nothing."""
        if self.monitor is None or self.ended or self.closed:
            return
        self.ended = True
        self.monitor.run_ended(iteration=self.iteration if iteration is None else int(iteration), state=state,
                               reason=reason)

    def close(self, linger_seconds: Optional[float] = None, wait: Callable[[float], None] = _sleep) -> None:
        """Where this rank started the monitor, keep it serving `linger_seconds` (default: the
        constructor's; math.inf: until `wait` returns, e.g. on Ctrl-C), then stop it; close the
        rank's records. `wait(seconds)` does the waiting (a caller's may end early on a signal)."""
        if self.monitor is None or self.closed:
            return
        self.closed = True
        atexit.unregister(self._at_exit)
        linger = self.linger_seconds if linger_seconds is None else linger_seconds
        try:
            if self.server is not None and linger > 0:
                if math.isinf(linger):
                    print(f"{self.prefix}run finished; page stays at {self.url}/ until Ctrl-C", flush=True)
                else:
                    print(f"{self.prefix}serving metrics for {linger:.0f} more seconds (a signal ends this)",
                          flush=True)
                wait(linger)
        finally:  # a Ctrl-C that ends the wait still stops the monitor
            self.monitor.close()
            self.server = None

    def _at_exit(self) -> None:
        """A process that leaves without end() failed (an exception left the training loop)."""
        if not self.ended:
            self.end(state="failed", reason="the process exited before training ended")
        try:
            self.close()
        except KeyboardInterrupt:  # Ctrl-C during the linger: just go
            pass
