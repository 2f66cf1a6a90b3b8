"""Benchmark (not a test): the live API under many concurrent clients, during real training.

Starts `python -m nanogpt` (a tiny model on the default corpus, --metrics-port 0), then alternates windows without
and with load: C client threads here hammer /metrics, /, /api/status, /api/history (as the page
asks for it: the overview), /api/history (everything), /export.csv and /api/stream for the window.
For each window it reads the training progress (nanogpt_tokens_total), the trainer process's
own CPU time (/proc/PID/stat, all its threads: training and serving) and the wall clock, and
prints, over P interleaved pairs (the order alternating):

- tokens per CPU-second of the trainer, loaded / unloaded: what serving costs the training
  process, whatever the load generator itself takes from the shared cores; and, to tell the
  two apart, the share of the process's CPU that its other threads (serving) took, and the
  training thread's own tokens per CPU-second (what contention for the cores costs it), and the
  CPU of the monitor process that serves (issue 19: the trainer only records);
- wall-clock tokens/s, loaded / unloaded: what a user sees on this machine, load generator included;
- requests served, errors and p50/p99 latency per endpoint over the loaded windows.

    python bench/load.py [--clients 16] [--seconds 10] [--pairs 8] [--data-file PATH]
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
sys.path.insert(0, str(REPO))

from exporter.page import CHART_FIELDS  # noqa: E402

TRAINER_FLAGS = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=8",
                 "--device=cpu", "--compile=False", "--max_iters=10000000", "--eval_interval=1000000",
                 "--eval_iters=2", "--log_interval=10", "--warmup_iters=10"]
FIELDS = ",".join(CHART_FIELDS)  # what the page asks for
ENDPOINTS = ["/metrics", "/", "/api/status", f"/api/history?format=columns&fields={FIELDS}&points=2000",
             "/api/history", "/export.csv", "/api/stream"]
TOKENS = re.compile(rb"^nanogpt_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
TICKS = os.sysconf("SC_CLK_TCK")


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
    conn = http.client.HTTPConnection(host, port, timeout=60)
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


def monitor_pid(trainer_pid: int) -> int | None:
    """The monitor process a trainer started (`python -m exporter serve ... --owner PID`); None for a
    trainer that serves in-process (the code before issue 19)."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if b"serve" in args and b"--owner" in args and args[args.index(b"--owner") + 1] == str(trainer_pid).encode():
            return int(proc.name)
    return None


def cpu_seconds(pid: int, thread: bool = False) -> float:
    """User + system CPU time of process `pid`, all its threads (fields 14 and 15 of /proc/PID/stat),
    or with `thread` of its main thread alone (the training loop)."""
    path = f"/proc/{pid}/task/{pid}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Window:
    """Tokens trained, trainer CPU seconds and wall seconds over a stretch of time."""

    def __init__(self, host: str, port: int, pid: int):
        self.host, self.port, self.pid = host, port, pid
        self.monitor = monitor_pid(pid)

    def __enter__(self) -> "Window":
        self._read()
        self.tokens, self.cpu, self.main_cpu, self.wall = -self.tokens, -self.cpu, -self.main_cpu, -self.wall
        self.monitor_cpu = -self.monitor_cpu
        return self

    def __exit__(self, *exc) -> None:
        tokens, cpu, main_cpu, wall, monitor_cpu = self.tokens, self.cpu, self.main_cpu, self.wall, self.monitor_cpu
        self._read()
        self.tokens, self.cpu, self.main_cpu, self.wall = (self.tokens + tokens, self.cpu + cpu,
                                                           self.main_cpu + main_cpu, self.wall + wall)
        self.monitor_cpu += monitor_cpu

    def _read(self) -> None:
        self.tokens = float(TOKENS.search(fetch(self.host, self.port, "/metrics")).group(1))
        self.cpu, self.main_cpu, self.wall = cpu_seconds(self.pid), cpu_seconds(self.pid, True), time.monotonic()
        self.monitor_cpu = cpu_seconds(self.monitor) if self.monitor else 0.0

    @property
    def per_main_cpu_second(self) -> float:
        return self.tokens / self.main_cpu

    @property
    def serving_share(self) -> float:
        """The share of the process's CPU its other threads took (the HTTP server, mostly)."""
        return 1 - self.main_cpu / self.cpu

    @property
    def per_cpu_second(self) -> float:
        return self.tokens / self.cpu

    @property
    def per_second(self) -> float:
        return self.tokens / self.wall


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


def loaded_window(host, port, pid, clients, seconds, latencies, errors) -> Window:
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=hammer, args=(host, port, until, i, latencies, errors)) for i in range(clients)]
    with Window(host, port, pid) as window:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return window


def quiet_window(host, port, pid, seconds) -> Window:
    with Window(host, port, pid) as window:
        time.sleep(seconds)  # the measurement window itself, not a wait for something to happen
    return window


def spread(ratios: list[float]) -> str:
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}..{q[2]:.3f}, "
            f"range {min(ratios):.3f}..{max(ratios):.3f} over {len(ratios)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each window")
    parser.add_argument("--pairs", type=int, default=8, help="unloaded/loaded window pairs, order alternating")
    parser.add_argument("--data-file", type=Path, default=None, help="default: the offline default corpus")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/nanogpt-bench-load"))
    args = parser.parse_args()

    proc, host, port = start_trainer(args.data_file and args.data_file.resolve(), args.out_dir)
    latencies, errors, pairs = defaultdict(list), defaultdict(list), []
    try:
        quiet_window(host, port, proc.pid, 5.0)  # warm-up: first steps and the iteration-0 eval
        for pair in range(args.pairs):
            order = ("quiet", "loaded") if pair % 2 == 0 else ("loaded", "quiet")  # interleaved: no drift bias
            windows = {}
            for kind in order:
                windows[kind] = (loaded_window(host, port, proc.pid, args.clients, args.seconds, latencies, errors)
                                 if kind == "loaded" else quiet_window(host, port, proc.pid, args.seconds))
            quiet, loaded = windows["quiet"], windows["loaded"]
            pairs.append((quiet, loaded))
            print(f"pair {pair + 1}: tokens/CPU-s {quiet.per_cpu_second:,.0f} -> {loaded.per_cpu_second:,.0f} "
                  f"({loaded.per_cpu_second / quiet.per_cpu_second:.3f}), tokens/s {quiet.per_second:,.0f} -> "
                  f"{loaded.per_second:,.0f} ({loaded.per_second / quiet.per_second:.3f}), trainer CPU "
                  f"{quiet.cpu / quiet.wall:.2f} -> {loaded.cpu / loaded.wall:.2f} cores, of it serving "
                  f"{quiet.serving_share:.1%} -> {loaded.serving_share:.1%}, monitor process "
                  f"{quiet.monitor_cpu / quiet.wall:.2f} -> {loaded.monitor_cpu / loaded.wall:.2f} cores", flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

    loaded_seconds = args.seconds * args.pairs
    print(f"\n{args.clients} clients, {args.pairs} x {args.seconds:.0f} s loaded (loadavg {load_average()})")
    print(f"{'endpoint':<40} {'served':>7} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for path in ENDPOINTS:
        times = sorted(latencies[path])
        p50 = statistics.median(times) * 1000 if times else float("nan")
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))] * 1000 if times else float("nan")
        print(f"{path[:40]:<40} {len(times):>7} {len(errors[path]):>6} {len(times) / loaded_seconds:>7.1f} "
              f"{p50:>8.1f} {p99:>8.1f}")
    for path, messages in errors.items():
        if messages:
            print(f"  {path}: {messages[0]} (x{len(messages)})")
    print(f"errors: {sum(len(e) for e in errors.values())}")
    print("tokens per trainer CPU-second, loaded / unloaded: "
          + spread([loaded.per_cpu_second / quiet.per_cpu_second for quiet, loaded in pairs]) + " (target >= 0.95)")
    print("wall-clock tokens/s, loaded / unloaded:           "
          + spread([loaded.per_second / quiet.per_second for quiet, loaded in pairs]))
    print("training thread's tokens per CPU-second, l / u:   "
          + spread([loaded.per_main_cpu_second / quiet.per_main_cpu_second for quiet, loaded in pairs]))
    quiet_share, loaded_share = [q.serving_share for q, _ in pairs], [x.serving_share for _, x in pairs]
    print(f"share of the trainer's CPU its other threads (serving) took: unloaded median "
          f"{statistics.median(quiet_share):.1%}, loaded median {statistics.median(loaded_share):.1%} "
          f"(range {min(loaded_share):.1%}..{max(loaded_share):.1%})")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
