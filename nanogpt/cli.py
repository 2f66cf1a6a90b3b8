"""`nanogpt-train`: parse the config, join DDP under torchrun, wire the monitor, train.

The one module that knows both the trainer and the monitor: MonitorObserver hands
each event of the loop to a nanogpt_monitor.MonitoredRun. Bad input (config,
data, checkpoint, port, web config) ends as one line `error: ...` on stderr and
exit code 2, never a traceback. SIGTERM and SIGINT stop training cleanly (see
_StopSignals); exit codes are listed below and in docs/faults.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Sequence

from nanogpt import events
from nanogpt.checkpoint import CheckpointError
from nanogpt.config import ConfigError, TrainConfig, parse_args
from nanogpt.data import DataError

__all__ = ["main", "monitored_run", "MonitorObserver"]

log = logging.getLogger("nanogpt")

EXIT_FAILED_RUN = 1  # training ran but ended "failed" (e.g. stop_on_nonfinite)
EXIT_BAD_INPUT = 2
# stopped by a signal: 128 + its number, as a shell reports a process a signal killed
# (SIGTERM 143, SIGINT 130), though here the run first saved a final checkpoint


class _StopSignals:
    """SIGTERM and SIGINT as requests, not kills. The first asks train() to stop after the current
    iteration and save a final checkpoint; more during that save are ignored (the save completes;
    kill -9 stops at once, and the atomic save keeps the last checkpoint whole). Any signal ends
    the linger after training (--metrics-linger, or until Ctrl-C on a terminal). The handler only
    records: Python runs it on the main thread between bytecodes, where I/O or taking a lock (even
    Event.set) could deadlock with the code it interrupted."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop) -> None:
        self.stop = stop  # a nanogpt.train.StopRequest
        self.received: list[int] = []  # list.append is atomic under the GIL
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        self.stop.request(f"terminated by {signal.Signals(signum).name}")

    def exit_code(self) -> int:
        """128 + the first signal's number (SIGTERM when another DDP rank got the signal)."""
        return 128 + (self.received[0] if self.received else signal.SIGTERM)

    def linger(self, seconds: float) -> None:
        """Sleep up to `seconds`, ending within 0.1 s of a signal received from now on."""
        seen, deadline = len(self.received), time.monotonic() + seconds
        while len(self.received) == seen and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))  # polled: a handler cannot safely wake an Event


class MonitorObserver(events.Observer):
    """Forwards each training event to a nanogpt_monitor.MonitoredRun, keeping nanoGPT's own figures."""

    def __init__(self, run):
        self.run = run

    def on_run_start(self, event: events.RunStart) -> None:
        self.run.start(max_iterations=event.max_iterations, model=event.model, start_iteration=event.start_iteration,
                       tokens_per_iteration=event.tokens_per_iteration, dataset=event.dataset, device=event.device,
                       dtype=event.dtype, model_config=event.model_config, world_size=event.world_size,
                       parameters=event.parameters, config=event.config, start_time=event.start_time)

    def on_iteration(self, event: events.Iteration) -> None:
        self.run.step(event.iteration, event.tokens, event.timestamp, event.data_seconds, event.sync_seconds)

    def on_log(self, event: events.LogPoint) -> None:
        self.run.log(event.iteration, event.loss, lr=event.lr, grad_norm=event.grad_norm,
                     step_seconds=event.step_seconds, tokens_per_second=event.tokens_per_second, mfu=event.mfu)

    def on_eval(self, event: events.EvalResult) -> None:
        self.run.evaluated(event.iteration, event.val_loss, train_loss=event.train_loss, seconds=event.eval_seconds,
                           best_val_loss=event.best_val_loss)

    def on_checkpoint(self, event: events.CheckpointSaved) -> None:
        self.run.checkpoint_saved(event.iteration, path=event.path, seconds=event.seconds)

    def on_checkpoint_failed(self, event: events.CheckpointFailed) -> None:
        self.run.checkpoint_failed(event.iteration, path=event.path, error=event.error)

    def on_sample(self, event: events.Sample) -> None:
        self.run.sample(event.iteration, event.text, prompt=event.prompt, seconds=event.seconds)

    def on_run_end(self, event: events.RunEnd) -> None:
        self.run.end(event.iteration, event.state, event.reason)


def monitored_run(cfg: TrainConfig, rank: int = 0):
    """This rank's MonitoredRun, opened (on local rank 0 it serves the node); None with --no-metrics.
    Rank 0 logs its history to out_dir/metrics.jsonl, rank r to metrics.rank<r>.jsonl. A port in
    use or a bad --metrics-web-config raises ConfigError (one line, exit 2)."""
    if cfg.no_metrics:
        return None
    from exporter import ServeError
    from nanogpt_monitor.run import MonitoredRun

    run = MonitoredRun(run_id=cfg.run_id, host=cfg.metrics_host, port=cfg.metrics_port,
                       metrics_log=os.path.join(cfg.out_dir, "metrics.jsonl"), linger_seconds=linger_seconds(cfg, rank),
                       web_config=cfg.metrics_web_config or None, directory=cfg.metrics_dir or None,
                       external=cfg.metrics_external, devices=[cfg.device],
                       spike_window=cfg.metrics_spike_window, spike_sigmas=cfg.metrics_spike_sigmas)
    try:
        run.open()
    except ServeError as e:
        raise ConfigError(str(e)) from None
    return run


def _setup_logging(where) -> None:
    handler = logging.StreamHandler(sys.stdout)  # flushes after every record
    handler.setFormatter(logging.Formatter(where.prefix + "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if where.rank == 0 else logging.WARNING)  # other ranks: only problems


def _init_distributed(cfg: TrainConfig, local_rank: int) -> TrainConfig:
    """Join the process group torchrun set up for us (a GPU per local rank); returns the config."""
    import torch
    import torch.distributed as dist

    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if use_cuda:
        cfg = dataclasses.replace(cfg, device=f"cuda:{local_rank}")
        torch.cuda.set_device(cfg.device)
    dist.init_process_group(backend=backend)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nanogpt-train` and `python -m nanogpt`; returns the exit code."""
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from nanogpt.train import StopRequest  # torch loads only once the arguments are known to be good
    from nanogpt_monitor.run import process_rank

    where = process_rank()
    _setup_logging(where)
    signals = _StopSignals(StopRequest())
    signals.install()
    try:
        code = _run(cfg, where, signals)
    finally:
        signals.restore()
    if where.launched:
        # everything is written, the process group destroyed and the server closed: leave without
        # interpreter finalisation, where gloo's C++ threads, torn down after Python, now and then
        # abort a rank that finished cleanly ("terminate called without an active exception")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(cfg: TrainConfig, where, signals: _StopSignals) -> int:
    """Join DDP, serve metrics, train, print the summary, linger; returns the exit code."""
    from nanogpt.train import OutOfMemory, train
    from nanogpt_monitor.run import shared_run_id

    trained, run = False, None
    try:
        if where.launched:
            cfg = _init_distributed(cfg, where.local_rank)
        cfg = dataclasses.replace(cfg, run_id=shared_run_id(cfg.run_id))  # every rank labels with rank 0's
        log.info("run_id: %s", cfg.run_id)
        run = monitored_run(cfg, where.rank)
        result = train(cfg, MonitorObserver(run) if run is not None else None, signals.stop)
        trained = True
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        _linger_and_close(run, 0.0, signals)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _linger_and_close(run, 0.0, signals)
        return 130
    except OutOfMemory as e:  # state "failed" is already reported; the last checkpoint is untouched
        print(f"error: {e}", file=sys.stderr)
        _linger_and_close(run, linger_seconds(cfg, where.rank, bool(signals.received)), signals)
        return EXIT_FAILED_RUN
    finally:
        if where.launched:
            import torch.distributed as dist

            if dist.is_initialized():
                if trained:
                    # leave together: a rank tearing gloo down while a peer is still busy (rank 0's
                    # last eval and checkpoint) can abort that peer ("terminate called ...")
                    dist.barrier()
                dist.destroy_process_group()
    summary = (f"run {result.run_id} {result.state}{': ' + result.reason if result.reason else ''}: "
               f"iteration {result.iteration}, params sha256 {result.param_digest}")  # fmt: skip
    # one write() per line: ranks share torchrun's stdout, and print() may write text and newline apart
    sys.stdout.write(f"{where.prefix}{summary}\n")
    sys.stdout.flush()
    _linger_and_close(run, linger_seconds(cfg, where.rank, bool(signals.received)), signals)
    if result.stopped:
        return signals.exit_code()
    return 0 if result.state == "finished" else EXIT_FAILED_RUN


def linger_seconds(cfg: TrainConfig, rank: int = 0, signalled: bool = False) -> float:
    """How long to keep serving after training: --metrics-linger when given; not given, until a
    signal (Ctrl-C) for rank 0 of a run started from a terminal (stdin and stderr a TTY) that no
    signal stopped already, else 0 (CI, pipes, other ranks: exit as soon as training ends)."""
    if cfg.metrics_linger is not None:
        return cfg.metrics_linger
    return math.inf if rank == 0 and not signalled and _on_terminal() else 0.0


def _on_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # closed or replaced streams
        return False


def _linger_and_close(run, seconds: float, signals: _StopSignals) -> None:
    """Keep the page `seconds` more where this rank serves it (so the final state gets scraped or
    seen; a signal ends the wait within 0.1 s), then stop the monitor and close the records."""
    if run is not None:
        run.close(linger_seconds=seconds, wait=signals.linger)


if __name__ == "__main__":
    raise SystemExit(main())
