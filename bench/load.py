"""Benchmark (not a test): the trainer's HTTP server under many concurrent clients, during real training.

Starts `python -m nanogpt` (a tiny model on the default corpus, --metrics-port 0), measures the
training rate (nanogpt_tokens_total over a window) unloaded, then again while C client threads
hammer /metrics, /, /api/status, /api/history, /export.csv and /api/stream for the same window.
Prints requests served, errors (must be 0) and p50/p99 latency per endpoint, and the loaded /
unloaded tokens/s ratio. The clients share the 2 cores with the trainer, as a real storm would.

    python bench/load.py [--clients 16] [--seconds 20] [--data-file PATH]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER_FLAGS = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=8",
                 "--device=cpu", "--compile=False", "--max_iters=10000000", "--eval_interval=1000000",
                 "--eval_iters=2", "--log_interval=10", "--warmup_iters=10"]
ENDPOINTS = ["/metrics", "/", "/api/status", "/api/history", "/export.csv", "/api/stream"]
TOKENS = re.compile(rb"^nanogpt_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def start_trainer(data_file: Path | None, out_dir: Path) -> tuple[subprocess.Popen, str, int]:
    """The trainer as a child in its own process group; returns (process, host, port) once it serves."""
    data = [f"--data-file={data_file}"] if data_file else []  # none: the trainer's offline default corpus
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogpt", *data, f"--out_dir={out_dir}", "--metrics-port=0", *TRAINER_FLAGS],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        match = re.search(r"metrics: http://([\d.]+):(\d+)/metrics", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its log
            return proc, match.group(1), int(match.group(2))
    raise RuntimeError(f"the trainer exited with {proc.wait()} before serving metrics")


def fetch(host: str, port: int, path: str) -> bytes:
    """One GET; /api/stream is read until its first event after the retry line, then dropped."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
        if path == "/api/stream":
            return b"".join(response.fp.readline() for _ in range(4))  # retry, blank, event, data
        return response.read()
    finally:
        conn.close()


def tokens_total(host: str, port: int) -> float:
    return float(TOKENS.search(fetch(host, port, "/metrics")).group(1))


def tokens_per_second(host: str, port: int, seconds: float) -> float:
    """The training rate over `seconds` of wall time, from the counter the trainer exports."""
    before, started = tokens_total(host, port), time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a wait for something to happen
    return (tokens_total(host, port) - before) / (time.monotonic() - started)


def hammer(host: str, port: int, until: float, index: int, latencies: dict, errors: dict) -> None:
    """One client: round-robin over the endpoints (each client starting elsewhere) until `until`."""
    i = index
    while time.monotonic() < until:
        path = ENDPOINTS[i % len(ENDPOINTS)]
        i += 1
        started = time.perf_counter()
        try:
            fetch(host, port, path)
            latencies[path].append(time.perf_counter() - started)
        except Exception as e:  # counted and shown: the bench's figure is that there are none
            errors[path].append(f"{type(e).__name__}: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    parser.add_argument("--data-file", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/nanogpt-bench-load"))
    args = parser.parse_args()

    proc, host, port = start_trainer(args.data_file and args.data_file.resolve(), args.out_dir)
    try:
        tokens_per_second(host, port, 5.0)  # warm-up: first steps and the iteration-0 eval
        unloaded = tokens_per_second(host, port, args.seconds)
        latencies, errors = defaultdict(list), defaultdict(list)
        until = time.monotonic() + args.seconds
        clients = [threading.Thread(target=hammer, args=(host, port, until, i, latencies, errors))
                   for i in range(args.clients)]
        for client in clients:
            client.start()
        loaded = tokens_per_second(host, port, args.seconds)
        for client in clients:
            client.join()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

    print(f"{args.clients} clients for {args.seconds:.0f} s against a training run (loadavg {load_average()})")
    print(f"{'endpoint':<14} {'served':>7} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for path in ENDPOINTS:
        times = sorted(latencies[path])
        p50 = statistics.median(times) * 1000 if times else float("nan")
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))] * 1000 if times else float("nan")
        print(f"{path:<14} {len(times):>7} {len(errors[path]):>6} {len(times) / args.seconds:>7.1f} "
              f"{p50:>8.1f} {p99:>8.1f}")
    total_errors = sum(len(e) for e in errors.values())
    for path, messages in errors.items():
        if messages:
            print(f"  {path}: {messages[0]} (x{len(messages)})")
    print(f"errors: {total_errors}")
    print(f"training tokens/s unloaded {unloaded:,.0f}, loaded {loaded:,.0f}, ratio {loaded / unloaded:.2f}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
