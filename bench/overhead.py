"""Exporter overhead: the same training with metrics off and on (scraped every 100 ms), interleaved.

Runs the real trainer CLI as a subprocess, alternately with --no-metrics and
with metrics on a free port while a client here GETs /metrics every 100 ms
(ten times Prometheus' usual rate). Prints tokens/s of each run (the median
of the trainer's own per-log-interval tok/s figures after warm-up), the ratio
on/off of each pair and their median and spread, the same for the trainer's
CPU seconds off/on (steadier than wall time on a busy machine), and the
/metrics latency p50/p99 and size. A benchmark, not a test: it asserts
nothing. Usage:

    python bench/overhead.py [--pairs 8] [--max-iters 300] [--threads 1] [-- extra trainer flags]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^iter (\d+): .*tok/s (\d+)")
URL_LINE = re.compile(r"metrics: (http://\S+)/metrics")


class Scraper(threading.Thread):
    """GETs url every `interval` s until stopped; records latency (s) and body size (bytes)."""

    def __init__(self, url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.latencies: list[float] = []
        self.sizes: list[int] = []
        self.gzip_sizes: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    body = response.read()
            except OSError:
                continue  # the trainer is shutting down
            self.latencies.append(time.perf_counter() - started)
            self.sizes.append(len(body))
            self.gzip_sizes.append(len(gzip.compress(body)))


def run_trainer(metrics: bool, max_iters: int, extra: list[str], warmup: int,
                threads: int) -> tuple[float, float, Scraper | None]:
    """One training run; returns (median tokens/s after warm-up, CPU seconds used, the scraper or None)."""
    # a fixed torch thread count: spinning OpenMP threads on a busy machine swamp a 1 % effect
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out_dir:
        # the default corpus (offline); `-- --data-file=PATH` trains on another text
        args = [sys.executable, "-m", "nanogpt", f"--out_dir={out_dir}",
                f"--max_iters={max_iters}", "--eval_interval=100000", "--eval_iters=2", "--log_interval=10",
                "--device=cpu", "--compile=False", *(["--metrics-port=0"] if metrics else ["--no-metrics"]), *extra]
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        scraper, rates = None, []
        try:
            for line in proc.stdout:
                if metrics and scraper is None and (match := URL_LINE.search(line)):
                    scraper = Scraper(match.group(1) + "/metrics")
                    scraper.start()
                if (match := LOG_LINE.match(line)) and int(match.group(1)) >= warmup:
                    rates.append(float(match.group(2)))
        except BaseException:
            proc.kill()  # interrupted (Ctrl-C): leave no orphan trainer behind
            raise
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, whatever else the machine runs
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not rates:
            raise SystemExit(f"error: the trainer failed (exit {proc.returncode}); run it alone to see why")
        return statistics.median(rates), usage.ru_utime + usage.ru_stime, scraper


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="off/on run pairs, order alternating")
    parser.add_argument("--max-iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="log points before this iteration are ignored")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainer")
    parser.add_argument("extra", nargs="*", help="flags passed to the trainer (after --)")
    args = parser.parse_args()
    off, on, cpu_off, cpu_on, scrapers = [], [], [], [], []
    for pair in range(args.pairs):
        for metrics in ((False, True) if pair % 2 == 0 else (True, False)):  # interleaved: no drift bias
            rate, cpu, scraper = run_trainer(metrics, args.max_iters, args.extra, args.warmup, args.threads)
            (on if metrics else off).append(rate)
            (cpu_on if metrics else cpu_off).append(cpu)
            if scraper is not None:
                scrapers.append(scraper)
            print(f"pair {pair + 1} metrics {'on ' if metrics else 'off'}: {rate:,.0f} tokens/s, "
                  f"trainer CPU {cpu:.2f} s", flush=True)
    latencies = [x for s in scrapers for x in s.latencies]
    sizes = [x for s in scrapers for x in s.sizes]
    gzip_sizes = [x for s in scrapers for x in s.gzip_sizes]
    print(f"tokens/s median: off {statistics.median(off):,.0f}, on {statistics.median(on):,.0f}")
    print("ratio on/off, tokens/s:   " + spread([b / a for a, b in zip(off, on)]) + " (target >= 0.99)")
    # CPU time is steadier than wall time on a shared machine: what the exporter costs the process
    print(f"trainer CPU seconds median: off {statistics.median(cpu_off):.2f}, on {statistics.median(cpu_on):.2f}")
    print("ratio off/on, CPU seconds: " + spread([a / b for a, b in zip(cpu_off, cpu_on)]) + " (target >= 0.99)")
    if latencies:
        print(f"/metrics scrapes: {len(latencies)}, latency p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
              f"p90 {percentile(latencies, 0.9) * 1000:.2f} ms, p99 {percentile(latencies, 0.99) * 1000:.2f} ms")
        print(f"/metrics size: {statistics.median(sizes):,.0f} bytes ({statistics.median(gzip_sizes):,.0f} gzipped)")
    print(f"loadavg at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def spread(ratios: list[float]) -> str:
    """Median of per-pair ratios, their quartiles and range: the pair-to-pair spread."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"median {statistics.median(ratios):.4f} over {len(ratios)} pairs, quartiles {q[0]:.4f}..{q[2]:.4f}, "
            f"range {min(ratios):.4f}..{max(ratios):.4f}")


if __name__ == "__main__":
    main()
