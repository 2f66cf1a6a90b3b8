"""The real trainer with a CUDA out-of-memory error injected from outside, for tests on CPU.

    python -m tests.support.oom_train --oom-at-forward N <nanogpt-train flags>

wraps nanogpt.model.GPT.forward so that its Nth call in training mode raises
torch.cuda.OutOfMemoryError (with the text CUDA's allocator uses), then runs
nanogpt.cli.main with the remaining flags. The trainer holds no knob for this:
everything else is the code users run. Evaluation forwards (eval mode) are not
counted, so checkpoints written at earlier evals are real.
"""

from __future__ import annotations

import argparse
import sys

import torch

from nanogpt.model import GPT

OOM_TEXT = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.06 GiB is free. (raised by tests.support.oom_train)")


def install(at_forward: int) -> None:
    """Make the `at_forward`-th training-mode GPT.forward raise torch.cuda.OutOfMemoryError."""
    original, calls = GPT.forward, 0

    def forward(self, *args, **kwargs):
        nonlocal calls
        if self.training:
            calls += 1
            if calls >= at_forward:
                raise torch.cuda.OutOfMemoryError(OOM_TEXT)
        return original(self, *args, **kwargs)

    GPT.forward = forward


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--oom-at-forward", type=int, required=True)
    ours, rest = parser.parse_known_args(argv)
    install(ours.oom_at_forward)
    from nanogpt.cli import main as train_main

    return train_main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
