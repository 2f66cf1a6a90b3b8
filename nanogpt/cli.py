"""`nanogpt-train`: parse the config, join DDP under torchrun, wire the observer, train.

The one module that may know both the trainer and the exporter: see
build_observer. Bad input (config, data, checkpoint) ends as one line
`error: ...` on stderr and exit code 2, never a traceback. SIGTERM and SIGINT
stop training cleanly (see _StopSignals); exit codes are listed below and in
docs/faults.md.
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
from nanogpt.config import ConfigError, TrainConfig, generate_run_id, parse_args
from nanogpt.data import DataError

__all__ = ["main", "build_observer"]

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


class _MonitorObserver(events.Observer):
    """Hands each training event to the exporter (event field names = TrainingMonitor keywords)."""

    def __init__(self, monitor):
        self.monitor = monitor

    def on_run_start(self, event: events.RunStart) -> None:
        from nanogpt_monitor.model_view import describe

        # fields one level deep: asdict() would deep-copy the model it must only describe
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "model"}
        self.monitor.run_started(**fields, model_tree=describe(event.model) if event.model is not None else None)

    def on_iteration(self, event: events.Iteration) -> None:
        # every step: pass the three fields directly, asdict() would copy for nothing
        self.monitor.iteration(event.iteration, event.tokens, event.timestamp)

    def on_log(self, event: events.LogPoint) -> None:
        self.monitor.log(**dataclasses.asdict(event))

    def on_eval(self, event: events.EvalResult) -> None:
        self.monitor.evaluated(**dataclasses.asdict(event))

    def on_checkpoint(self, event: events.CheckpointSaved) -> None:
        self.monitor.checkpoint_saved(**dataclasses.asdict(event))

    def on_checkpoint_failed(self, event: events.CheckpointFailed) -> None:
        self.monitor.checkpoint_failed(**dataclasses.asdict(event))

    def on_run_end(self, event: events.RunEnd) -> None:
        self.monitor.run_ended(**dataclasses.asdict(event))

    def close(self) -> None:
        """Stop the monitor process (when this rank started it) and close the journal and metrics log."""
        self.monitor.close()

    @property
    def url(self) -> str | None:
        return self.monitor.server.url if self.monitor.server is not None else None


def build_observer(cfg: TrainConfig, rank: int, local_rank: int) -> events.Observer | None:
    """The observer that records this rank's metrics; None with --no-metrics.

    Every rank records into the node's run directory (--metrics-dir, else one per run_id under the
    temp dir). Local rank 0 starts the node's monitor process, which serves every local rank on
    cfg.metrics_host:cfg.metrics_port, with basic auth / TLS when --metrics-web-config names a file;
    with --metrics-external one started separately does. Rank 0 logs its history to
    out_dir/metrics.jsonl, rank r > 0 to out_dir/metrics.rank<r>.jsonl. A port in use raises
    ConfigError (one line, exit 2).
    """
    if cfg.no_metrics:
        return None
    from exporter import ServeError, TrainingMonitor, WebConfigError, load_web_config
    from exporter.journal import run_directory

    name = "metrics.jsonl" if rank == 0 else f"metrics.rank{rank}.jsonl"
    directory = cfg.metrics_dir or run_directory(cfg.run_id, _node_rank())
    monitor = TrainingMonitor(run_id=cfg.run_id, rank=rank, directory=directory,
                              metrics_log=os.path.join(cfg.out_dir, name), node=_node_rank())
    # device health of this rank's GPU, read at log points (nothing without CUDA)
    from nanogpt_monitor.gpu import register_gpu_collector

    register_gpu_collector(monitor, devices=[cfg.device])
    if local_rank == 0 and not cfg.metrics_external:
        try:
            if cfg.metrics_web_config:
                load_web_config(cfg.metrics_web_config)  # a bad file is one line now, not the monitor's
            linger = linger_seconds(cfg, rank)
            monitor.serve(host=cfg.metrics_host, port=cfg.metrics_port, web_config=cfg.metrics_web_config or None,
                          linger=linger, remove_dir=not cfg.metrics_dir)
        except (ServeError, WebConfigError) as e:
            monitor.discard()
            raise ConfigError(str(e)) from None
        # printed, not logged: ranks > 0 log only warnings, and tests read the URL
        prefix = f"[rank {rank}] " if "RANK" in os.environ and "WORLD_SIZE" in os.environ else ""
        print(f"{prefix}metrics: {monitor.server.url}/metrics", flush=True)
    return _MonitorObserver(monitor)


def _node_rank() -> int:
    """The node's rank under torchrun (GROUP_RANK), 0 alone."""
    return int(os.environ.get("GROUP_RANK", 0) or 0)


def _setup_logging(rank: int, world_size: int) -> None:
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    handler = logging.StreamHandler(sys.stdout)  # flushes after every record
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)  # other ranks: only problems


def _init_distributed(cfg: TrainConfig) -> tuple[TrainConfig, int, int]:
    """Join the process group when torchrun started us; returns (cfg, rank, local_rank)."""
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if use_cuda:
        cfg = dataclasses.replace(cfg, device=f"cuda:{local_rank}")
        torch.cuda.set_device(cfg.device)
    dist.init_process_group(backend=backend)
    # every rank must label its metrics with the same run id: rank 0 decides
    run_id = [cfg.run_id or generate_run_id()]
    dist.broadcast_object_list(run_id, src=0)
    return dataclasses.replace(cfg, run_id=run_id[0]), rank, local_rank


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nanogpt-train` and `python -m nanogpt`; returns the exit code."""
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0)) if distributed else 0
    _setup_logging(rank, int(os.environ.get("WORLD_SIZE", 1)) if distributed else 1)
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from nanogpt.train import StopRequest  # torch loads only once the arguments are known to be good

    signals = _StopSignals(StopRequest())
    signals.install()
    try:
        code = _run(cfg, distributed, rank, signals)
    finally:
        signals.restore()
    if distributed:
        # everything is written, the process group destroyed and the server closed: leave without
        # interpreter finalisation, where gloo's C++ threads, torn down after Python, now and then
        # abort a rank that finished cleanly ("terminate called without an active exception")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(cfg: TrainConfig, distributed: bool, rank: int, signals: _StopSignals) -> int:
    """Join DDP, serve metrics, train, print the summary, linger; returns the exit code."""
    from nanogpt.train import OutOfMemory, train

    local_rank, trained, observer = 0, False, None
    try:
        if distributed:
            cfg, rank, local_rank = _init_distributed(cfg)
        elif not cfg.run_id:
            cfg = dataclasses.replace(cfg, run_id=generate_run_id())
        log.info("run_id: %s", cfg.run_id)
        observer = None if cfg.no_metrics else build_observer(cfg, rank, local_rank)
        result = train(cfg, observer, signals.stop)
        trained = True
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OutOfMemory as e:  # state "failed" is already reported; the last checkpoint is untouched
        print(f"error: {e}", file=sys.stderr)
        _linger_and_close(observer, cfg, signals, rank)
        return EXIT_FAILED_RUN
    finally:
        if distributed:
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
    sys.stdout.write(f"[rank {rank}] {summary}\n" if distributed else f"{summary}\n")
    sys.stdout.flush()
    _linger_and_close(observer, cfg, signals, rank)
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


def _linger_and_close(observer, cfg: TrainConfig, signals: _StopSignals, rank: int) -> None:
    """Keep serving for linger_seconds() (so the final state gets scraped or seen), then stop."""
    seconds = linger_seconds(cfg, rank, bool(signals.received)) if observer is not None else 0.0
    if observer is not None and observer.url is None:
        seconds = 0.0  # this rank serves nothing: the node's monitor is local rank 0's
    if seconds == math.inf:
        log.info("run finished; page stays at %s/ until Ctrl-C", observer.url)
    elif seconds > 0:
        log.info("serving metrics for %.0f more seconds (a signal ends this)", seconds)
    if seconds > 0:
        signals.linger(seconds)
    if observer is not None:
        observer.close()


if __name__ == "__main__":
    raise SystemExit(main())
