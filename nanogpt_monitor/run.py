"""One training process's monitor, for the framework adapters and hand-written loops.

`MonitoredRun` is what the Hugging Face and Lightning callbacks share: it
records this rank into the node's run directory with the rank from the
environment, and on local rank 0 starts the node's monitor process on the
port (as our trainer does under torchrun) and prints
`metrics: http://HOST:PORT/metrics`; it describes the model once, and keeps the
bookkeeping a framework's hooks do not hand over: step time and tokens/s
between log points (evaluations left out), the best validation loss, and the
end state (a process that exits before training ended reports `failed`).

Every method except `start` logs and counts its own exceptions (in
nanogpt_exporter_errors_total) instead of raising into training; `start`
raises `exporter.ServeError` when the port is taken, before training begins.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import secrets
import time
from typing import Any, Optional

from exporter import ServeError, TrainingMonitor

from .model_view import components, config_fields, describe

__all__ = ["MonitoredRun", "generate_run_id", "guarded_hook", "process_rank"]

log = logging.getLogger(__name__)


def generate_run_id() -> str:
    """A time-sortable, label- and filesystem-safe id such as 20250101-120000-a1b2c3."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def process_rank() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun / accelerate set them; (0, 0, 1) alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def _shared_run_id(run_id: Optional[str]) -> str:
    """The given id, else one that rank 0 generates and, in a process group, sends to every rank."""
    if run_id:
        return str(run_id)
    run_id = generate_run_id()
    import torch.distributed as dist  # only here: the rest of this module needs no torch

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [run_id]
        dist.broadcast_object_list(box, src=0)  # a collective: every rank starts its run here
        run_id = box[0]
    elif process_rank()[2] > 1:
        log.warning("nanogpt_monitor: no run_id and no process group yet; ranks will not share a run_id")
    return run_id


def _guarded(method):
    """Log and count an exception of an adapter method instead of raising it into training."""

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
    from on_train_begin, before training starts."""

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


class MonitoredRun:
    """This process's TrainingMonitor (and, on local rank 0, the node's monitor process), started by
    `start`, and the figures between log points."""

    def __init__(self, run_id: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
                 metrics_log: Optional[str] = None, linger_seconds: float = 0.0, web_config: Any = None):
        """`port`: the node's monitor port (0 = any free port); `linger_seconds`: keep serving that
        long when the process exits, so the end gets scraped."""
        self.run_id, self.host, self.port = run_id, host, int(port)
        self.metrics_log, self.linger_seconds, self.web_config = metrics_log, float(linger_seconds), web_config
        self.monitor: Optional[TrainingMonitor] = None
        self.server = None
        self.iteration = 0
        self.ended = self.closed = False
        self.best_val_loss = math.inf
        self._span_start = self._span_tokens = self._span_steps = self._span_excluded = 0

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

    def start(self, max_iterations: int, model=None, start_iteration: int = 0,
              tokens_per_iteration: Optional[int] = None, dataset: str = "", device: str = "", dtype: str = "",
              model_config: Optional[dict] = None, world_size: Optional[int] = None) -> TrainingMonitor:
        """Record this rank (on local rank 0, start the node's monitor and print its URL) and report
        the run's start; describe `model` (any torch.nn.Module) for the page and
        nanogpt_model_parameters. Once per process."""
        if self.monitor is not None:
            raise RuntimeError("this MonitoredRun has already started")
        rank, local_rank, env_world_size = process_rank()
        run_id = _shared_run_id(self.run_id)
        monitor = TrainingMonitor(run_id=run_id, rank=rank, metrics_log=self.metrics_log,
                                  node=int(os.environ.get("GROUP_RANK", 0) or 0))
        if local_rank == 0:
            try:
                self.server = monitor.serve(host=self.host, port=self.port, web_config=self.web_config,
                                            linger=self.linger_seconds, remove_dir=True)
            except ServeError:
                monitor.discard()
                raise
            prefix = f"[rank {rank}] " if env_world_size > 1 else ""
            print(f"{prefix}metrics: {self.server.url}/metrics", flush=True)
        self.monitor, self.run_id = monitor, run_id
        atexit.register(self._at_exit)
        self._report_start(max_iterations, model, start_iteration, tokens_per_iteration, dataset, device, dtype,
                           model_config, world_size or env_world_size)
        return monitor

    @_guarded
    def _report_start(self, max_iterations, model, start_iteration, tokens_per_iteration, dataset, device, dtype,
                      model_config, world_size) -> None:
        tree = describe(model) if model is not None else None
        self.iteration = int(start_iteration)
        self._reset_span()
        self.monitor.run_started(
            max_iterations=int(max_iterations), world_size=int(world_size), start_iteration=int(start_iteration),
            tokens_per_iteration=tokens_per_iteration,
            model_config={**(config_fields(model) if model is not None else {}), **(model_config or {})},
            parameters=components(tree) if tree else {}, model_tree=tree, dataset=dataset, device=device,
            dtype=dtype)

    def _reset_span(self) -> None:
        self._span_start, self._span_tokens, self._span_steps, self._span_excluded = time.perf_counter(), 0, 0, 0.0

    @_guarded
    def step(self, iteration: int, tokens: int = 0) -> None:
        """After every optimizer step: host numbers only (the per-step hot path)."""
        self.iteration = int(iteration)
        self._span_tokens += tokens
        self._span_steps += 1
        self.monitor.iteration(iteration=self.iteration, tokens=int(tokens))

    @_guarded
    def log(self, iteration: int, loss: float, lr: Optional[float] = None, grad_norm: Optional[float] = None,
            scalars: Optional[dict] = None) -> None:
        """At a log point: `loss` (a host float), with step time and tokens/s over the steps since the
        last log point, evaluations left out."""
        seconds = time.perf_counter() - self._span_start - self._span_excluded
        steps, tokens = self._span_steps, self._span_tokens
        self._reset_span()
        self.monitor.log(iteration=int(iteration), loss=float(loss), lr=lr, grad_norm=grad_norm,
                         step_seconds=seconds / steps if steps and seconds > 0 else None,
                         tokens_per_second=tokens / seconds if tokens and seconds > 0 else None,
                         scalars=scalars)

    @_guarded
    def evaluated(self, iteration: int, val_loss: Optional[float], train_loss: Optional[float] = None,
                  seconds: Optional[float] = None) -> None:
        """After an evaluation; its time is left out of the step time of the current span."""
        if val_loss is not None and math.isfinite(val_loss):
            self.best_val_loss = min(self.best_val_loss, float(val_loss))
        if seconds:
            self._span_excluded += float(seconds)
        best = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        self.monitor.evaluated(iteration=int(iteration), train_loss=train_loss, val_loss=val_loss,
                               best_val_loss=best, eval_seconds=seconds)

    @_guarded
    def checkpoint_saved(self, iteration: int, path: str = "", seconds: Optional[float] = None) -> None:
        """After a checkpoint was written."""
        if seconds:
            self._span_excluded += float(seconds)
        self.monitor.checkpoint_saved(iteration=int(iteration), path=str(path), seconds=seconds)

    @_guarded
    def end(self, iteration: Optional[int] = None, state: str = "finished", reason: str = "") -> None:
        """Once, when training ends ("finished" or "failed"); later calls do nothing."""
        if self.monitor is None or self.ended:
            return
        self.ended = True
        self.monitor.run_ended(iteration=self.iteration if iteration is None else int(iteration), state=state,
                               reason=reason)

    def close(self, linger_seconds: Optional[float] = None) -> None:
        """Keep serving `linger_seconds` (default: the constructor's) where this rank started the
        monitor, then stop it; close the rank's records."""
        if self.monitor is None or self.closed:
            return
        self.closed = True
        linger = self.linger_seconds if linger_seconds is None else linger_seconds
        if self.server is not None and linger > 0:
            print(f"serving metrics for {linger:.0f} more seconds", flush=True)
            time.sleep(linger)
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
