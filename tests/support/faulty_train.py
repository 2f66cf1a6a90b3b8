"""The real trainer with faults injected from outside, for tests: a NaN loss, a zero lr, slow saves,
a slow rank, a slow loader, an lr burst.

    python -m tests.support.faulty_train --inject_nonfinite_at 30 <nanogpt-train flags>
    python -m torch.distributed.run --nproc_per_node=2 -m tests.support.faulty_train ... (torchrun)

takes its own flags off the command line, patches nanoGPT's loop from the
outside and runs `nanogpt.cli.main` on the rest: the same trainer process,
the same CLI, logs, metrics and exit codes; nothing in nanogpt/ knows about faults.

- `--lr_zero_after N`: `nanogpt.train.get_lr` answers 0 from iteration N on,
  so the weights stop changing and the loss plateaus (NanoGPTLossPlateau).
- `--inject_nonfinite_at N`: from iteration N on, GPT.forward in training mode
  returns its loss multiplied by NaN: a real NaN through backward, the optimizer
  step, the logged loss and the metrics (evaluations, in eval mode, are left alone).
  The loop asks get_lr for each iteration's lr before that iteration's forward
  passes; the patched get_lr notes the iteration there.
- `--slow_save_seconds S`: the checkpoint writer train.py calls spreads each
  write over S seconds (through the real atomic save: temp file, fsync, rename),
  a wide window in which to kill the process mid-save.
- `--slow_rank R --slow_rank_seconds S`: on DDP rank R only, each training-mode
  GPT.forward sleeps S seconds first: a straggler, which the other ranks wait
  for in the gradient all-reduce (NanoGPTStragglerRank).
- `--slow_data_seconds S`: nanoGPT's get_batch sleeps S seconds before each
  batch: an input-bound loop (NanoGPTInputBound).
- `--lr_burst_at N --lr_burst_factor F`: iteration N alone trains at F times its
  scheduled lr (default 1000): the weights are thrown far off and the loss
  spikes (NanoGPTLossSpike). Put N between log points: a logged rise of the lr
  reads as a schedule's warm restart and starts the spike window afresh.

In-process tests use `injected(...)`, a context manager that undoes the patches.
Deliberately not here: any fault the operating system can make for real (a full
disk, a read-only out_dir, signals); tests/e2e/test_faults.py makes those.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

import nanogpt.train
from nanogpt import cli
from nanogpt.model import GPT


def slow_save(seconds: float, chunks: int = 10) -> Callable[[Any, Any], None]:
    """A `save` for save_checkpoint that writes in `chunks` pieces over `seconds`, each flushed
    before the pause, so a kill meanwhile finds a partial temp file."""

    def save(obj: Any, f: Any) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getbuffer()
        step = max(1, -(-len(data) // chunks))  # ceil: at most `chunks` writes
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()  # in the page cache before the pause
            time.sleep(seconds / chunks)

    return save


@contextmanager
def injected(inject_nonfinite_at: int = -1, lr_zero_after: int = -1, slow_save_seconds: float = 0.0,
             slow_rank: int = -1, slow_rank_seconds: float = 0.0, slow_data_seconds: float = 0.0,
             lr_burst_at: int = -1, lr_burst_factor: float = 1000.0) -> Iterator[None]:
    """Patch nanoGPT's loop with the given faults (-1 / 0 = off) until the block ends."""
    real_get_lr, real_forward = nanogpt.train.get_lr, GPT.forward
    real_save, real_get_batch = nanogpt.train.save_checkpoint, nanogpt.train.get_batch
    current = [-1]  # the iteration the loop is on, as get_lr last heard it
    slow_here = slow_rank >= 0 and int(os.environ.get("RANK", "0")) == slow_rank

    def get_lr(it: int, cfg) -> float:
        current[0] = it
        lr = 0.0 if 0 <= lr_zero_after <= it else real_get_lr(it, cfg)
        return lr * lr_burst_factor if it == lr_burst_at else lr

    def forward(self: GPT, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if slow_here and self.training:
            time.sleep(slow_rank_seconds)
        logits, loss = real_forward(self, idx, targets)
        if loss is not None and self.training and 0 <= inject_nonfinite_at <= current[0]:
            loss = loss * float("nan")
        return logits, loss

    def get_batch(*args, **kwargs):
        time.sleep(slow_data_seconds)
        return real_get_batch(*args, **kwargs)

    nanogpt.train.get_lr, GPT.forward = get_lr, forward
    if slow_save_seconds > 0:
        nanogpt.train.save_checkpoint = functools.partial(real_save, save=slow_save(slow_save_seconds))
    if slow_data_seconds > 0:
        nanogpt.train.get_batch = get_batch
    try:
        yield
    finally:
        nanogpt.train.get_lr, GPT.forward, nanogpt.train.save_checkpoint = real_get_lr, real_forward, real_save
        nanogpt.train.get_batch = real_get_batch


def split_args(argv: Sequence[str]) -> tuple[dict, list[str]]:
    """(the fault options, the trainer's own arguments); `--name=value`, `--name value` and
    dashed names (`--lr-zero-after`) all work, as for nanogpt-train."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--inject_nonfinite_at", "--inject-nonfinite-at", type=int, default=-1)
    parser.add_argument("--lr_zero_after", "--lr-zero-after", type=int, default=-1)
    parser.add_argument("--slow_save_seconds", "--slow-save-seconds", type=float, default=0.0)
    parser.add_argument("--slow_rank", "--slow-rank", type=int, default=-1)
    parser.add_argument("--slow_rank_seconds", "--slow-rank-seconds", type=float, default=0.0)
    parser.add_argument("--slow_data_seconds", "--slow-data-seconds", type=float, default=0.0)
    parser.add_argument("--lr_burst_at", "--lr-burst-at", type=int, default=-1)
    parser.add_argument("--lr_burst_factor", "--lr-burst-factor", type=float, default=1000.0)
    faults, rest = parser.parse_known_args(list(argv))
    return vars(faults), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run nanogpt-train with the faults named on the command line; returns its exit code."""
    faults, rest = split_args(sys.argv[1:] if argv is None else argv)
    with injected(**faults):
        return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
