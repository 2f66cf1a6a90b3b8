"""Simulated training runs for scale tests and bench/fleet.py: many ranks through the real exporter.

Each rank is a real `exporter.TrainingMonitor` fed synthetic numbers (no torch, no model): every
rank iterates once a second and logs its own loss, rank 0 also evaluates, as nanogpt.train does
under DDP. The ranks are grouped by node, RANKS_PER_NODE to a node (as their `node` label says):
every rank of a node records into that node's run directory (a temp dir, removed on close), and the
node's first rank starts the node's monitor process (`python -m exporter serve`), which serves
every rank of the node on one ephemeral port of 127.0.0.1, as on a real node. Many ranks share one
process (a run of 8..64 ranks per process), so a 1,024-rank fleet fits on a small machine; real
ranks are separate processes, a node's monitor the same one process.

Behaviours (time t in seconds since the run started; W = the plateau window of the rules in use):
  learn    loss 1.2 + 3.0 exp(-t / 15W): keeps improving by more than 1 % per window for the bench's span
  plateau  loss flat at 2.0 from the start
  nan      learns, then logs NaN from FAULT_WINDOWS x W on
  stall    learns, then stops iterating at FAULT_WINDOWS x W (the process and its node's monitor
           stay up, state running)
  straggler  learns; from FAULT_WINDOWS x W on, rank STRAGGLER takes STRAGGLER_FACTOR times as long
           as the others on its own work, and they wait for it in the all-reduce
  spike    learns, and one logged iteration (the first after FAULT_WINDOWS x W and the spike
           detector's warm-up) logs SPIKE_FACTOR times the loss

Every rank reports its data wait and, as under gloo, its all-reduce wait: a rank's own work takes
about BUSY_SECONDS of each STEP_SECONDS (with 2 % jitter), the rest it waits for the slowest.

`python -m tests.support.fleet --run-id R --ranks N --behaviour B --window-seconds W` hosts one
run: prints one JSON line {"run_id", "ports": [...]} once every node's monitor serves, one port per
node (node k's ranks are k x RANKS_PER_NODE onwards), then steps until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from exporter import TrainingMonitor
from exporter.spikes import WARMUP

BEHAVIOURS = ("learn", "plateau", "nan", "stall", "straggler", "spike")
FAULT_WINDOWS = 1.5  # the faulty runs go wrong after this many plateau windows
STEP_SECONDS = 1.0  # one iteration a second on every rank
BUSY_SECONDS, DATA_SECONDS = 0.5, 0.01  # of each step: a rank's own work, and its wait for a batch
STRAGGLER, STRAGGLER_FACTOR = 3, 1.5  # the straggler run's slow rank, and how much slower it works
SPIKE_FACTOR = 3.0
EVAL_EVERY = 10  # rank 0 evaluates (and saves a checkpoint) every 10 iterations
RANKS_PER_NODE = 8  # a node's ranks share its run directory, its monitor and its `node` label
TOKENS_PER_ITERATION = 8 * 1024
MODEL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=False)
PARAMETERS = {"total": 124_000_000, "token_embedding": 38_600_000, "position_embedding": 786_432,
              "attention": 28_300_000, "mlp": 56_600_000, "layernorm": 19_200, "lm_head": 0}  # fmt: skip


def loss_at(behaviour: str, t: float, window_seconds: float) -> float:
    """The noiseless synthetic loss of a behaviour at t seconds into the run."""
    if behaviour == "plateau":
        return 2.0
    if behaviour == "nan" and t >= FAULT_WINDOWS * window_seconds:
        return math.nan
    return 1.2 + 3.0 * math.exp(-t / (15 * window_seconds))


class SimulatedRun:
    """`ranks` recording TrainingMonitors of one run_id in this process (`monitors`), stepped by one
    thread, grouped into nodes of `ranks_per_node`; each node's monitor process (`servers`,
    exporter.launch.MonitorProcess) serves its ranks on 127.0.0.1, on `ports`, one per node."""

    def __init__(self, run_id: str, ranks: int, behaviour: str, window_seconds: float, seed: int = 0,
                 ranks_per_node: int = RANKS_PER_NODE):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; expected one of {', '.join(BEHAVIOURS)}")
        self.run_id, self.behaviour, self.window_seconds = run_id, behaviour, window_seconds
        self.ranks_per_node = ranks_per_node
        nodes = -(-ranks // ranks_per_node)
        self.directories = [Path(tempfile.mkdtemp(prefix=f"fleet-{run_id}-node{n}-")) for n in range(nodes)]
        self.monitors = [TrainingMonitor(run_id=run_id, rank=r, directory=self.directories[r // ranks_per_node],
                                         node=r // ranks_per_node) for r in range(ranks)]  # fmt: skip
        try:  # a node's first rank starts its monitor; the nodes' monitors start side by side
            with ThreadPoolExecutor(nodes) as pool:
                self.servers = list(pool.map(lambda first: first.serve(host="127.0.0.1", port=0, remove_dir=True),
                                             self.monitors[::ranks_per_node]))  # fmt: skip
        except BaseException:
            self._close_ranks()
            raise
        self.ports = [server.port for server in self.servers]
        self._random = random.Random(f"{run_id}/{seed}")
        self._stop = threading.Event()
        self.start_time = time.time()
        for monitor in self.monitors:
            monitor.run_started(max_iterations=100_000, world_size=ranks, tokens_per_iteration=TOKENS_PER_ITERATION,
                                model_config=MODEL, parameters=PARAMETERS, dataset="openwebtext", device="cuda",
                                dtype="bfloat16", start_time=self.start_time)  # fmt: skip
        self._spiked = False
        self._thread = threading.Thread(target=self._loop, name=f"fleet-{run_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        iteration = 0
        while not self._stop.wait(max(0.0, self.start_time + (iteration + 1) * STEP_SECONDS - time.time())):
            iteration += 1
            now = time.time()
            t = now - self.start_time
            if self.behaviour == "stall" and t >= FAULT_WINDOWS * self.window_seconds:
                continue  # hung: no iteration completes, the process and its node's monitor stay up
            base = loss_at(self.behaviour, t, self.window_seconds)
            faulty = t >= FAULT_WINDOWS * self.window_seconds
            if self.behaviour == "spike" and faulty and iteration > WARMUP and not self._spiked:
                base, self._spiked = base * SPIKE_FACTOR, True
            for monitor in self.monitors:
                slow = self.behaviour == "straggler" and faulty and monitor.rank == STRAGGLER
                self.step(monitor, iteration, base, now, t, STRAGGLER_FACTOR if slow else 1.0)

    def step(self, monitor: TrainingMonitor, iteration: int, base: float, now: float, t: float,
             slowness: float = 1.0) -> None:
        """One iteration of one rank: the per-step call, the log point, rank 0's evaluation."""
        step_seconds = STEP_SECONDS * (1 + 0.02 * self._random.random())
        loss = base * (1 + 0.003 * self._random.gauss(0, 1))  # each rank's own micro-batch loss
        busy = BUSY_SECONDS * slowness * (1 + 0.02 * self._random.random())
        monitor.iteration(iteration, TOKENS_PER_ITERATION, now, data_seconds=DATA_SECONDS,
                          sync_seconds=max(0.0, STEP_SECONDS - busy))
        monitor.log(iteration=iteration, loss=loss, lr=6e-4, step_seconds=step_seconds,
                    tokens_per_second=TOKENS_PER_ITERATION / step_seconds, elapsed_seconds=t, timestamp=now,
                    grad_norm=1.0, mfu=0.4)  # fmt: skip
        if monitor.rank == 0 and iteration % EVAL_EVERY == 0 and math.isfinite(base):
            monitor.evaluated(iteration=iteration, train_loss=base, val_loss=base * 1.05)
            monitor.checkpoint_saved(iteration=iteration, path="out/ckpt.pt", seconds=0.5, timestamp=now)

    def close(self) -> None:
        """Stop stepping, then close every rank (a node's first rank stops its monitor process) and
        remove the nodes' directories."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_ranks()

    def _close_ranks(self) -> None:
        firsts = [m for m in self.monitors if m.server is not None]
        with ThreadPoolExecutor(max(1, len(firsts))) as pool:  # each monitor takes a moment to stop
            list(pool.map(lambda monitor: monitor.close(), firsts))
        for monitor in self.monitors:
            if monitor.server is None:
                monitor.close()
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # ends the blocking stdin read in main()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Host one simulated run (see the module docstring).")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="learn")
    parser.add_argument("--window-seconds", type=float, required=True)
    parser.add_argument("--ranks-per-node", type=int, default=RANKS_PER_NODE)
    args = parser.parse_args(argv)
    run = SimulatedRun(args.run_id, args.ranks, args.behaviour, args.window_seconds,
                       ranks_per_node=args.ranks_per_node)
    signal.signal(signal.SIGTERM, _interrupt)
    print(json.dumps({"run_id": args.run_id, "ports": run.ports}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or is gone)
    except KeyboardInterrupt:
        pass
    run.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
