"""What the training loop reports, and the observer interface that receives it.

Stdlib only: the loop builds these plain dataclasses from Python numbers it
already holds on the host (no tensors, no extra device syncs), and hands them
to an observer. The loop never knows who listens; `nanogpt.cli` wires the
monitor in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStart:
    """Once, before the first iteration (after a resume too)."""

    run_id: str
    rank: int
    world_size: int
    start_iteration: int  # 0, or the checkpoint's iteration on resume
    max_iterations: int
    tokens_per_iteration: int  # per rank: batch_size * block_size * grad_accum_steps
    model_config: dict  # n_layer, n_head, n_embd, block_size, vocab_size, dropout, bias
    parameters: dict  # component -> count; see GPT.parameter_counts()
    dataset: str
    device: str
    dtype: str
    config: dict  # the whole TrainConfig as plain values
    start_time: float  # unix seconds
    node: int = 0  # node rank of a multi-node run (torchrun's GROUP_RANK); 0 on one machine
    # the model itself (the raw nn.Module, by reference), for observers that describe it;
    # the loop does not describe it: what a monitor shows of a model is the wiring's business
    model: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Iteration:
    """After every optimizer step. Cheap by design: host numbers only."""

    iteration: int  # the iteration just completed
    tokens: int  # tokens this rank trained on in this iteration
    timestamp: float  # unix seconds
    data_seconds: float = 0.0  # host time this iteration spent getting its batches
    # host time waiting in the gradient all-reduce after this rank's gradients were ready
    # (nanogpt.allreduce_wait); None where it is not measured (one process, NCCL)
    sync_seconds: Optional[float] = None


@dataclass(frozen=True)
class LogPoint:
    """At each log interval (and each eval iteration), after nanoGPT's own sync."""

    iteration: int
    loss: float  # may be nan/inf; observers must cope
    lr: float
    step_seconds: float  # mean wall time per iteration since the last log point, evals excluded
    tokens_per_second: float  # this rank, over the same span
    grad_norm: Optional[float]  # before clipping; None when clipping is off
    mfu: Optional[float]  # 0..1, None until enough steps were timed
    elapsed_seconds: float  # since the run (this process) started
    timestamp: float  # unix seconds


@dataclass(frozen=True)
class EvalResult:
    """After estimate_loss() on rank 0."""

    iteration: int
    train_loss: float
    val_loss: float
    best_val_loss: float
    eval_seconds: float
    timestamp: float


@dataclass(frozen=True)
class CheckpointSaved:
    iteration: int
    path: str
    seconds: float
    timestamp: float


@dataclass(frozen=True)
class CheckpointFailed:
    """A checkpoint could not be written (disk full, read-only out_dir); training goes on."""

    iteration: int
    path: str
    error: str  # one line, e.g. "[Errno 28] No space left on device"
    timestamp: float


@dataclass(frozen=True)
class Sample:
    """After an evaluation on rank 0: what the model writes from a fixed prompt and seed."""

    iteration: int
    text: str  # the prompt and what the model wrote after it
    prompt: str
    seconds: float  # generating it (left out of the step time, like the eval)
    timestamp: float


@dataclass(frozen=True)
class RunEnd:
    """Once, when the loop ends: state is "finished" or "failed"."""

    iteration: int
    state: str
    reason: str = ""
    timestamp: float = field(default=0.0)


class Observer:
    """Receives training events. Every method is a no-op; override what you need.

    Calls happen on the training thread, so implementations must be fast and
    must not raise (the exporter guards and counts its own errors).
    """

    def on_run_start(self, event: RunStart) -> None: ...

    def on_iteration(self, event: Iteration) -> None: ...

    def on_log(self, event: LogPoint) -> None: ...

    def on_eval(self, event: EvalResult) -> None: ...

    def on_checkpoint(self, event: CheckpointSaved) -> None: ...

    def on_checkpoint_failed(self, event: CheckpointFailed) -> None: ...

    def on_sample(self, event: Sample) -> None: ...

    def on_run_end(self, event: RunEnd) -> None: ...


class SafeObserver(Observer):
    """The observer as the loop calls it: each event goes on to `observer` (nowhere when it is None);
    an exception there is logged once per method and never stops training."""

    def __init__(self, observer: Observer | None):
        self._observer = observer if observer is not None else Observer()
        self._failed: set[str] = set()

    def _raised(self, method: str) -> None:
        if method not in self._failed:
            self._failed.add(method)
            _log.exception("observer.%s raised; training goes on (further errors from it are not logged)", method)

    # one method per event, spelled out: "go to definition" leads from the loop to the observer's own

    def on_run_start(self, event: RunStart) -> None:
        try:
            self._observer.on_run_start(event)
        except Exception:
            self._raised("on_run_start")

    def on_iteration(self, event: Iteration) -> None:
        try:
            self._observer.on_iteration(event)
        except Exception:
            self._raised("on_iteration")

    def on_log(self, event: LogPoint) -> None:
        try:
            self._observer.on_log(event)
        except Exception:
            self._raised("on_log")

    def on_eval(self, event: EvalResult) -> None:
        try:
            self._observer.on_eval(event)
        except Exception:
            self._raised("on_eval")

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        try:
            self._observer.on_checkpoint(event)
        except Exception:
            self._raised("on_checkpoint")

    def on_checkpoint_failed(self, event: CheckpointFailed) -> None:
        try:
            self._observer.on_checkpoint_failed(event)
        except Exception:
            self._raised("on_checkpoint_failed")

    def on_sample(self, event: Sample) -> None:
        try:
            self._observer.on_sample(event)
        except Exception:
            self._raised("on_sample")

    def on_run_end(self, event: RunEnd) -> None:
        try:
            self._observer.on_run_end(event)
        except Exception:
            self._raised("on_run_end")
