"""Benchmark (not a test): a days-long run's worth of logged points through the exporter, no torch.

Drives a TrainingMonitor through its public API (iteration + log every step, an eval every 1,000)
with N points (default a million), its monitor process serving, and prints at each checkpoint the
RSS of the recording process and of the monitor (from /proc/PID/status) and the cost of one
iteration()+log() pair; at the end, the latency of /metrics, /api/status, /api/history and
/export.csv over real HTTP. Memory must stay flat after the history fills.

    python bench/longrun.py [--points 1000000] [--every 100000] [--metrics-log]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter import TrainingMonitor  # noqa: E402

START = 1_700_000_000.0  # simulated unix time: one logged iteration a second
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False)


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process (this one by default) in MiB (VmRSS is in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def latency_ms(url: str, repeats: int) -> tuple[float, float, float, int]:
    """(median, min and max ms of `repeats` GETs of `url`, bytes of the last answer)."""
    times, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as r:
            size = len(r.read())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), max(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000, help="print a checkpoint line every N points")
    parser.add_argument("--metrics-log", action="store_true", help="also append every point to a metrics log")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "metrics.jsonl" if args.metrics_log else None
        monitor = TrainingMonitor(run_id="longrun", rank=0, metrics_log=log_path)
        monitor.run_started(max_iterations=args.points, tokens_per_iteration=768, model_config=MODEL,
                            parameters={"total": 800_000}, start_time=START)
        server = monitor.serve(host="127.0.0.1", port=0)
        print(f"start: rss {rss_mb():.1f} MiB, metrics log {'on' if log_path else 'off'}")
        print(f"{'points':>9} {'rss MiB':>8} {'monitor':>8} {'us/step':>8}")
        chunk_started = time.perf_counter()
        for i in range(1, args.points + 1):
            t = START + i
            monitor.iteration(iteration=i, tokens=768, timestamp=t)
            if i % 1000 == 0:
                monitor.evaluated(iteration=i, train_loss=2.0, val_loss=2.1, best_val_loss=2.1)
            monitor.log(iteration=i, loss=1.5 + 2.5 / (1 + i / 20_000) + 0.01 * (i % 7), lr=6e-4,
                        step_seconds=0.1, tokens_per_second=7680.0, elapsed_seconds=float(i), timestamp=t)
            if i % args.every == 0:
                per_step = (time.perf_counter() - chunk_started) / args.every * 1e6
                print(f"{i:>9,} {rss_mb():>8.1f} {rss_mb(server.pid):>8.1f} {per_step:>8.1f}", flush=True)
                chunk_started = time.perf_counter()
        overview = "/api/history?format=columns&fields=iteration,loss,timestamp,val_loss,eval_train_loss&points=2512"
        for path, repeats in (("/metrics", 50), ("/api/status", 20), ("/", 20), ("/api/history", 10),
                              (overview, 10), ("/api/history?since=" + str(args.points - 100), 50),
                              ("/export.csv", 3)):
            ms, low, high, size = latency_ms(server.url + path, repeats)
            print(f"GET {path[:40]:<40} median {ms:8.2f} ms (range {low:.2f}..{high:.2f})  {size / 1024:9.1f} KiB")
        print(f"end: rss {rss_mb():.1f} MiB, monitor rss {rss_mb(server.pid):.1f} MiB")
        server.close()
        monitor.close()


if __name__ == "__main__":
    main()
