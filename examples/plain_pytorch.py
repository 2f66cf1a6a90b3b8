"""A plain PyTorch training loop, instrumented by hand with the exporter's TrainingMonitor.

    python examples/plain_pytorch.py --metrics-port 8000 --max-steps 300
    # then open http://127.0.0.1:8000/ or scrape http://127.0.0.1:8000/metrics

Trains a tiny byte-level transformer on Python's language reference on the CPU
(well under a minute). Every monitor call takes plain numbers the loop already
has on the host; `describe` (nanogpt_monitor.model_view) turns the model into
the tree the page draws and the components of nanogpt_model_parameters.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from exporter import ServeError, TrainingMonitor
from nanogpt_monitor.model_view import components, describe
from nanogpt_monitor.run import generate_run_id, process_rank
from shared import TinyLM, Windows, corpus, lr_factor, parse_flags


@torch.no_grad()
def evaluate(model: TinyLM, batches) -> float:
    model.eval()
    loss = sum(model.loss(b).item() for b in batches) / len(batches)
    model.train()
    return loss


def main(argv=None) -> int:
    args = parse_flags("Plain PyTorch loop with nanogpt-monitor's TrainingMonitor.", argv)
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

    # Every process records; under torchrun, local rank 0 starts the node's one monitor process.
    rank, local_rank, world_size = process_rank()
    monitor = TrainingMonitor(run_id=args.run_id or generate_run_id(), rank=rank,
                              metrics_log=os.path.join(args.out_dir, "metrics.jsonl"))
    if local_rank == 0:
        try:
            server = monitor.serve(host=args.metrics_host, port=args.metrics_port)
        except ServeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"metrics: {server.url}/metrics", flush=True)
    tree = describe(model)
    monitor.run_started(max_iterations=args.max_steps, world_size=world_size, tokens_per_iteration=tokens_per_step,
                        model_tree=tree, parameters=components(tree), dataset="pydoc_data.topics (bytes)",
                        device="cpu", dtype="float32")
    os.makedirs(args.out_dir, exist_ok=True)
    step, state, best_val = 0, "failed", float("inf")
    try:
        span_start, span_steps = time.perf_counter(), 0
        for step, batch in enumerate(batches, start=1):
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            monitor.iteration(iteration=step, tokens=tokens_per_step)  # every step: cheap, no I/O
            span_steps += 1
            if step % args.log_every == 0:  # .item() syncs: only at log points
                seconds = time.perf_counter() - span_start
                monitor.log(iteration=step, loss=loss.item(), lr=schedule.get_last_lr()[0],
                            grad_norm=grad_norm.item(), step_seconds=seconds / span_steps,
                            tokens_per_second=span_steps * tokens_per_step / seconds)
                span_start, span_steps = time.perf_counter(), 0
            if step % args.eval_every == 0:
                started = time.perf_counter()
                val_loss = evaluate(model, val_batches)
                best_val = min(best_val, val_loss)
                monitor.evaluated(iteration=step, val_loss=val_loss, best_val_loss=best_val,
                                  eval_seconds=time.perf_counter() - started)
                span_start += time.perf_counter() - started  # step time leaves evaluations out
            if step % args.save_every == 0:
                path = os.path.join(args.out_dir, "model.pt")
                torch.save(model.state_dict(), path)
                monitor.checkpoint_saved(iteration=step, path=path)
            if step >= args.max_steps:
                break
        state = "finished"
    finally:  # an exception on its way out still leaves the run marked failed
        monitor.run_ended(iteration=step, state=state)
        print(f"run {monitor.run_id} {state}: iteration {step}", flush=True)
        if args.metrics_linger > 0 and monitor.server is not None:
            time.sleep(args.metrics_linger)  # the monitor keeps serving the final figures meanwhile
        monitor.close()  # stops the monitor process this rank started, if it did
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
