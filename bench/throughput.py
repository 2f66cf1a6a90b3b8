"""Training throughput on nanoGPT's small CPU config (a benchmark: prints figures, asserts nothing).

    python bench/throughput.py [--data-file PATH] [--max-iters 200] [--device cpu]

Without --data-file it trains on tiny Shakespeare as `--dataset shakespeare`
does (downloaded once into the trainer's cache; offline, pass the file).

The config is nanoGPT's README CPU example on tiny Shakespeare: n_layer=4,
n_head=4, n_embd=128, block_size=64, batch_size=12, no dropout, lr 1e-3 with
100 warmup iterations decaying to 1e-4 at max_iters, beta2 0.99, seed 1337.
Every iteration is a log point (on CPU the loss read costs nothing extra), so
each step time is measured; the first 10 are warm-up and left out of the median.
nanoGPT itself runs this config at about 47 ms/step (~16k tokens/s) on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from nanogpt import events
from nanogpt.config import build_config
from nanogpt.data import DataError
from nanogpt.train import train

WARMUP = 10


class _Record(events.Observer):
    def __init__(self) -> None:
        self.logs: list[events.LogPoint] = []

    def on_log(self, event: events.LogPoint) -> None:
        self.logs.append(event)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-file", default="", help="a local copy of tiny Shakespeare (default: download it once)")
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = build_config(({
            "out_dir": out_dir, "dataset": "shakespeare", "data_file": args.data_file, "device": args.device, "max_iters": args.max_iters,
            "lr_decay_iters": args.max_iters, "eval_interval": 250, "eval_iters": 20, "log_interval": 1,
            "always_save_checkpoint": False, "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
            "batch_size": 12, "gradient_accumulation_steps": 1, "dropout": 0.0, "learning_rate": 1e-3,
            "warmup_iters": 100, "min_lr": 1e-4, "beta2": 0.99, "seed": 1337, "compile": False,
        }, "bench"))  # fmt: skip
        record = _Record()
        try:
            train(cfg, record)
        except DataError as e:  # offline without --data-file, or a bad file
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    timed = record.logs[WARMUP:]
    ms = statistics.median(e.step_seconds for e in timed) * 1000
    tok_s = statistics.median(e.tokens_per_second for e in timed)
    print(f"config: n_layer=4 n_head=4 n_embd=128 block_size=64 batch_size=12, {args.device}, {len(timed)} timed steps")
    print(f"median step time: {ms:.1f} ms/step")
    print(f"median throughput: {tok_s:,.0f} tokens/s")
    first, last = record.logs[0], record.logs[-1]
    print(f"loss: iteration {first.iteration} {first.loss:.4f}, iteration {last.iteration} {last.loss:.4f}")


if __name__ == "__main__":
    main()
