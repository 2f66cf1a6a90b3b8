"""Helpers for the trainer's own tests: a tiny config, a recording observer, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nanogpt import events
from nanogpt.config import TrainConfig, build_config
from tests.support.procs import REPO

# small enough to train tens of iterations per second on 2 cores
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, dropout=0.0, device="cpu",
            compile=False, eval_iters=2, log_interval=5, eval_interval=10, max_iters=20, warmup_iters=5,
            lr_decay_iters=20, sample_chars=20)  # fmt: skip


def _tiny_values(tmp_path: Path, overrides: dict) -> dict:
    # no data_file: the trainer's offline default corpus, so the tests need nothing beside the clone
    return {**TINY, "out_dir": str(tmp_path / "out"), "data_cache_dir": str(tmp_path / "cache"), **overrides}


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    """A validated config for a tiny model on the default corpus, writing only under tmp_path."""
    return build_config((_tiny_values(tmp_path, overrides), "test"))


class Recorder(events.Observer):
    """Keeps every event in arrival order as (method name, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def of(self, method: str) -> list:
        return [e for m, e in self.events if m == method]

    def on_run_start(self, event): self.events.append(("on_run_start", event))  # noqa: E704
    def on_iteration(self, event): self.events.append(("on_iteration", event))  # noqa: E704
    def on_log(self, event): self.events.append(("on_log", event))  # noqa: E704
    def on_eval(self, event): self.events.append(("on_eval", event))  # noqa: E704
    def on_checkpoint(self, event): self.events.append(("on_checkpoint", event))  # noqa: E704
    def on_sample(self, event): self.events.append(("on_sample", event))  # noqa: E704
    def on_run_end(self, event): self.events.append(("on_run_end", event))  # noqa: E704


def run_cli(*args: str, module: str = "nanogpt", cwd: Path = REPO, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m <module> args...` to completion, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # fmt: skip


def tiny_flags(tmp_path: Path, **overrides) -> list[str]:
    """Command-line flags equivalent to tiny_config(tmp_path, **overrides)."""
    values = _tiny_values(tmp_path, {"no_metrics": True, **overrides})
    return [f"--{key}={value}" for key, value in values.items()]
