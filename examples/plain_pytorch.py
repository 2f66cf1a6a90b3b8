"""A plain PyTorch training loop, monitored with nanogpt_monitor's MonitoredRun.

    python examples/plain_pytorch.py --metrics-port 8000 --max-steps 300
    # then open http://127.0.0.1:8000/ or scrape http://127.0.0.1:8000/metrics

Trains a tiny byte-level transformer on Python's language reference on the CPU
(well under a minute). Every call to the run takes plain numbers the loop
already has on the host; step time and tokens/s come from the run's own clock.
The loop times the DataLoader's next() (data_wait), each evaluation and its
sample (eval) and each save (checkpoint), so the step phase is the rest.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from exporter import ServeError
from nanogpt_monitor import MonitoredRun
from shared import TinyLM, Windows, corpus, lr_factor, parse_flags


@torch.no_grad()
def evaluate(model: TinyLM, batches) -> float:
    model.eval()
    loss = sum(model.loss(b).item() for b in batches) / len(batches)
    model.train()
    return loss


@torch.no_grad()
def write(model: TinyLM, prompt: bytes, length: int, block_size: int) -> str:
    """`length` bytes after `prompt`, the likeliest each time: what the page shows the model writing."""
    model.eval()
    idx = torch.tensor([list(prompt)])
    for _ in range(length):
        idx = torch.cat([idx, model(idx[:, -block_size:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train()
    return bytes(idx[0].tolist()).decode("utf-8", errors="replace")


def main(argv=None) -> int:
    args = parse_flags("Plain PyTorch loop with nanogpt-monitor's MonitoredRun.", argv)
    torch.manual_seed(0)
    train_data, val_data = corpus()
    model = TinyLM(args.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(args.lr_zero_after))
    batches = torch.utils.data.DataLoader(Windows(train_data, args.block_size, args.max_steps * args.batch_size),
                                          batch_size=args.batch_size)
    # fresh validation windows at every evaluation, as nanoGPT's estimate_loss samples them
    val_batches = torch.utils.data.DataLoader(Windows(val_data, args.block_size, 4 * args.batch_size, seed=None),
                                              batch_size=args.batch_size)
    tokens_per_step = args.batch_size * args.block_size

    os.makedirs(args.out_dir, exist_ok=True)

    # every rank records; local rank 0 starts the node's monitor and prints `metrics: URL`
    run = MonitoredRun(run_id=args.run_id, host=args.metrics_host, port=args.metrics_port,
                       metrics_log=os.path.join(args.out_dir, "metrics.jsonl"), linger_seconds=args.metrics_linger)
    try:
        run.open()
    except ServeError as e:  # the port is taken: one line, before any training
        print(f"error: {e}", file=sys.stderr)
        return 2
    with run:
        run.start(max_iterations=args.max_steps, model=model, tokens_per_iteration=tokens_per_step,
                  dataset="pydoc_data.topics (bytes)", device="cpu", dtype="float32")
        loader, step = iter(batches), 0
        while step < args.max_steps:
            started = time.perf_counter()
            batch = next(loader, None)  # the DataLoader's own work: sampling, __getitem__, collate
            data_seconds = time.perf_counter() - started
            if batch is None:
                break
            step += 1
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            # every step: host numbers only, no I/O; the fetch's seconds are data_wait, not step
            run.step(step, tokens=tokens_per_step, data_seconds=data_seconds)
            if step % args.log_every == 0:  # .item() syncs: only at log points
                run.log(step, loss=loss.item(), lr=schedule.get_last_lr()[0], grad_norm=grad_norm.item())
            if step % args.eval_every == 0:
                started = time.perf_counter()
                run.evaluated(step, val_loss=evaluate(model, val_batches), seconds=time.perf_counter() - started)
                started = time.perf_counter()
                run.sample(step, write(model, b"The ", 48, args.block_size), prompt="The ",
                           seconds=time.perf_counter() - started)
            if step % args.save_every == 0:
                started, path = time.perf_counter(), os.path.join(args.out_dir, "model.pt")
                torch.save(model.state_dict(), path)
                run.checkpoint_saved(step, path=path, seconds=time.perf_counter() - started)
        print(f"run {run.run_id} finished: iteration {step}", flush=True)
    # leaving the block ends the run "finished" ("failed" on an exception), lingers, stops the monitor
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
