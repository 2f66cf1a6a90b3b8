"""Exporter overhead: the same training with metrics off and on (scraped every 100 ms), interleaved.

Runs the real trainer CLI as a subprocess, alternately with --no-metrics and
with metrics on a free port while a client here GETs /metrics every 100 ms
(ten times Prometheus' usual rate). Prints tokens/s of each run (the median
of the trainer's own per-log-interval tok/s figures after warm-up), the ratio
on/off of each pair and their median and spread, the same for the trainer's
CPU time per iteration after warm-up off/on (steadier than wall time on a busy
machine; all threads, the server's included) and for its whole process, the share
of the CPU the trainer's other threads (serving) took within each run (free of the
run-to-run spread), and the /metrics latency p50/p99 and size (Prometheus-like requests on a kept-alive plain socket, so
the figure is the exporter's, not a client library's). A benchmark, not a test: it asserts
nothing. Usage:

    python bench/overhead.py [--pairs 8] [--max-iters 300] [--threads 1] [-- extra trainer flags]
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from load import cpu_seconds  # noqa: E402 - the trainer's CPU, all threads or its main one
LOG_LINE = re.compile(r"^iter (\d+): .*tok/s (\d+)")
URL_LINE = re.compile(r"metrics: (http://\S+)/metrics")


# What Prometheus 2.x sends: OpenMetrics preferred, gzip accepted, on a kept-alive connection.
SCRAPE_REQUEST = ("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench/overhead.py\r\n"
                  "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n"
                  "Accept-Encoding: gzip\r\n\r\n")


class Scraper(threading.Thread):
    """GETs url every `interval` s until stopped, as Prometheus does (one kept-alive connection,
    opened again when the server closes it); records latency (s, send to last byte, a connect
    included where one was needed) and body size (bytes, as sent and gunzipped). The request is a
    prebuilt byte string on a plain socket, so the latency is the exporter's, not a client library's."""

    def __init__(self, url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        parts = urllib.parse.urlsplit(url)
        self.address = (parts.hostname, parts.port)
        self.request = SCRAPE_REQUEST.format(path=parts.path, host=parts.netloc).encode()
        self.interval = interval
        self.latencies: list[float] = []  # after warm-up
        self.warmup_latencies: list[float] = []  # start-up, the first eval and the first iterations
        self.warmed_up = threading.Event()  # set by run_trainer at the first log line past warm-up
        self.sizes: list[int] = []
        self.gzip_sizes: list[int] = []
        self.connections = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        connection = None
        while not self.stopped.wait(self.interval):
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = socket.create_connection(self.address, timeout=5)
                    self.connections += 1
                connection.sendall(self.request)
                head, body = self._read_answer(connection)
            except OSError:
                if connection is not None:
                    connection.close()
                connection = None  # closed while idle, or the trainer is shutting down
                continue
            (self.latencies if self.warmed_up.is_set() else self.warmup_latencies).append(time.perf_counter() - started)
            self.gzip_sizes.append(len(body))
            self.sizes.append(len(gzip.decompress(body)) if b"content-encoding: gzip" in head.lower() else len(body))
            if b"connection: close" in head.lower():
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    @staticmethod
    def _read_answer(connection: socket.socket) -> tuple[bytes, bytes]:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before an answer")
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed mid-answer")
            body += chunk
        return head, body


def run_trainer(metrics: bool, max_iters: int, extra: list[str], warmup: int,
                threads: int) -> tuple[float, float, float, float, Scraper | None]:
    """One training run; returns (median tokens/s after warm-up, CPU ms per iteration after warm-up,
    the share of that CPU the process's other threads took (the HTTP server, mostly), CPU seconds
    of the whole process, the scraper or None). The per-iteration figure is what monitoring costs
    while training; the whole-process one adds the exporter's start-up."""
    # a fixed torch thread count: spinning OpenMP threads on a busy machine swamp a 1 % effect
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out_dir:
        # the default corpus (offline); `-- --data-file=PATH` trains on another text
        args = [sys.executable, "-m", "nanogpt", f"--out_dir={out_dir}",
                f"--max_iters={max_iters}", "--eval_interval=100000", "--eval_iters=2", "--log_interval=10",
                "--device=cpu", "--compile=False", *(["--metrics-port=0"] if metrics else ["--no-metrics"]), *extra]
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        scraper, rates, marks = None, [], []  # marks: (iteration, process CPU seconds) at each log line
        try:
            for line in proc.stdout:
                if metrics and scraper is None and (match := URL_LINE.search(line)):
                    scraper = Scraper(match.group(1) + "/metrics")
                    scraper.start()
                if (match := LOG_LINE.match(line)) and int(match.group(1)) >= warmup:
                    rates.append(float(match.group(2)))
                    if scraper is not None:
                        scraper.warmed_up.set()
                    marks.append((int(match.group(1)), cpu_seconds(proc.pid),
                                  cpu_seconds(proc.pid, thread=True)))
        except BaseException:
            proc.kill()  # interrupted (Ctrl-C): leave no orphan trainer behind
            raise
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time, whatever else the machine runs
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or len(marks) < 2:
            raise SystemExit(f"error: the trainer failed (exit {proc.returncode}); run it alone to see why")
        (first, cpu_first, main_first), (last, cpu_last, main_last) = marks[0], marks[-1]
        per_iteration = (cpu_last - cpu_first) / (last - first) * 1000
        others = 1 - (main_last - main_first) / (cpu_last - cpu_first) if cpu_last > cpu_first else 0.0
        return statistics.median(rates), per_iteration, others, usage.ru_utime + usage.ru_stime, scraper


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
    off, on, step_off, step_on, cpu_off, cpu_on, scrapers = [], [], [], [], [], [], []
    others_off, others_on = [], []
    for pair in range(args.pairs):
        for metrics in ((False, True) if pair % 2 == 0 else (True, False)):  # interleaved: no drift bias
            rate, step, others, cpu, scraper = run_trainer(metrics, args.max_iters, args.extra, args.warmup,
                                                           args.threads)
            (on if metrics else off).append(rate)
            (others_on if metrics else others_off).append(others)
            (step_on if metrics else step_off).append(step)
            (cpu_on if metrics else cpu_off).append(cpu)
            if scraper is not None:
                scrapers.append(scraper)
            print(f"pair {pair + 1} metrics {'on ' if metrics else 'off'}: {rate:,.0f} tokens/s, "
                  f"trainer CPU {step:.2f} ms per iteration after warm-up, {cpu:.2f} s in all", flush=True)
    latencies = [x for s in scrapers for x in s.latencies]
    warmup_latencies = [x for s in scrapers for x in s.warmup_latencies]
    sizes = [x for s in scrapers for x in s.sizes]
    gzip_sizes = [x for s in scrapers for x in s.gzip_sizes]
    print(f"tokens/s median: off {statistics.median(off):,.0f}, on {statistics.median(on):,.0f}")
    print("ratio on/off, tokens/s:   " + spread([b / a for a, b in zip(off, on)]) + " (target >= 0.99)")
    # CPU time is steadier than wall time on a shared machine: what the exporter costs the process
    print(f"trainer CPU ms per iteration after warm-up, median: off {statistics.median(step_off):.2f}, "
          f"on {statistics.median(step_on):.2f}")
    print("ratio off/on, CPU per iteration: " + spread([a / b for a, b in zip(step_off, step_on)]) + " (target >= 0.99)")
    # measured within each run, so free of the run-to-run spread of the ratio above
    print(f"share of that CPU the trainer's other threads (serving) took, median: off "
          f"{statistics.median(others_off) * 100:.2f} %, on {statistics.median(others_on) * 100:.2f} % "
          f"(range {min(others_on) * 100:.2f}..{max(others_on) * 100:.2f} %)")
    print(f"trainer CPU seconds in all (start-up and exit included), median: off {statistics.median(cpu_off):.2f}, "
          f"on {statistics.median(cpu_on):.2f}")
    print("ratio off/on, CPU seconds in all: " + spread([a / b for a, b in zip(cpu_off, cpu_on)]))
    if latencies:
        print(f"/metrics scrapes: {len(latencies)}, latency p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
              f"p90 {percentile(latencies, 0.9) * 1000:.2f} ms, p99 {percentile(latencies, 0.99) * 1000:.2f} ms, "
              f"over {sum(s.connections for s in scrapers)} connections (after warm-up)")
        if warmup_latencies:
            print(f"/metrics during warm-up (start-up, first eval): {len(warmup_latencies)} scrapes, "
                  f"p50 {percentile(warmup_latencies, 0.5) * 1000:.2f} ms, max {max(warmup_latencies) * 1000:.1f} ms")
        print(f"/metrics size: {statistics.median(sizes):,.0f} bytes ({statistics.median(gzip_sizes):,.0f} as sent, gzipped)")
    print(f"loadavg at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def spread(ratios: list[float]) -> str:
    """Median of per-pair ratios, their quartiles and range: the pair-to-pair spread."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return (f"median {statistics.median(ratios):.4f} over {len(ratios)} pairs, quartiles {q[0]:.4f}..{q[2]:.4f}, "
            f"range {min(ratios):.4f}..{max(ratios):.4f}")


if __name__ == "__main__":
    main()
