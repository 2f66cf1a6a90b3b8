"""The first run on a real GPU, as one command: each CUDA claim of the project, with its figure.

    bash scripts/gpu_check.sh [--iters 300] [--data-file PATH] [-- extra trainer flags]

Runs the real trainer (subprocesses, `python -m nanogpt`) on cuda:0 with the shakespeare-char
preset and checks: bf16, and fp16 with GradScaler, train 300 iterations with the loss falling;
torch.cuda.set_sync_debug_mode("warn") sees no host-device sync in steps between log points
(bench/sync_probe.py); the GPU metrics are present and non-zero while /metrics is scraped at
10 Hz; tokens/s with metrics on (10 Hz scrapes) / off >= 0.99 (runs interleaved); MFU is
plausible for the device; a CUDA out-of-memory error is one `error:` line and exit 1.
Prints one table row per claim (docs/gpus.md: "Checking a real GPU") and exits 0 when all hold,
1 when one does not. Without CUDA it says so and exits 0. Under 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = (REPO / ".." / "shared" / "data" / "tinyshakespeare.txt").resolve()
LOG_LINE = re.compile(r"^iter (\d+): loss ([\d.naif+-]+), time [\d.]+ms, tok/s (\d+), mfu ([\d.]+%|n/a)")
URL_LINE = re.compile(r"metrics: (http://\S+)/metrics")
WARMUP_ITERS = 50  # log points before this are compile/allocation warm-up, not throughput
MFU_PLAUSIBLE = (0.005, 0.75)  # below: something is badly off; above: the peak FLOP/s table is wrong
# readings that must be > 0 on a GPU that trains (throttle reasons are 0/1 flags: present is enough)
NONZERO = ("allocated", "reserved", "peak_allocated", "used", "total")


@dataclass
class Claim:
    claim: str
    figure: str
    ok: bool


@dataclass
class Run:
    """What one trainer run printed and, with metrics on, what 10 Hz scrapes of it saw."""

    exit: int
    output: str
    losses: list[tuple[int, float]]
    rates: list[float]  # tok/s per log point after warm-up
    mfus: list[float]
    scrapes: list[str]


class Scraper(threading.Thread):
    """GETs /metrics every `interval` s and keeps the bodies (the GPU figures are read from them)."""

    def __init__(self, url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        self.url, self.interval, self.bodies, self.stopped = url, interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    self.bodies.append(response.read().decode())
            except OSError:
                continue  # starting or shutting down


def parse_log(output: str) -> tuple[list[tuple[int, float]], list[float], list[float]]:
    """(iteration, loss) of every log line, tok/s and MFU (0..1) of those after warm-up."""
    losses, rates, mfus = [], [], []
    for match in map(LOG_LINE.match, output.splitlines()):
        if match:
            iteration = int(match.group(1))
            losses.append((iteration, float(match.group(2))))
            if iteration >= WARMUP_ITERS:
                rates.append(float(match.group(3)))
                if match.group(4) != "n/a":
                    mfus.append(float(match.group(4).rstrip("%")) / 100)
    return losses, rates, mfus


def train(flags: list[str], metrics: bool, command: tuple[str, ...] = ("nanogpt",), timeout: float = 240) -> Run:
    """One run of `python -m <command> <flags>`; with metrics on, /metrics is scraped at 10 Hz while it trains."""
    args = [sys.executable, "-m", *command, *flags, *(["--metrics-port=0"] if metrics else ["--no-metrics"])]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines, scraper, deadline = [], None, time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if metrics and scraper is None and (match := URL_LINE.search(line)):
                scraper = Scraper(match.group(1) + "/metrics")
                scraper.start()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(args)} ran past {timeout:.0f} s")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if scraper is not None:
            scraper.stopped.set()
            scraper.join()
    output = "".join(lines)
    return Run(proc.returncode, output, *parse_log(output), scraper.bodies if scraper else [])


def loss_claim(name: str, run: Run, iters: int) -> Claim:
    """Trained to the end, every loss finite, the mean of the last 3 logged losses < 0.8 x the first."""
    finite = [loss for _, loss in run.losses if math.isfinite(loss)]
    if run.exit != 0 or len(finite) < 4 or len(finite) != len(run.losses) or run.losses[-1][0] != iters:
        tail = run.output.strip().splitlines()[-1:] or ["no output"]
        return Claim(name, f"exit {run.exit}, {len(run.losses)} log lines, {len(finite)} finite: {tail[0]}", False)
    first, last = finite[0], statistics.mean(finite[-3:])
    return Claim(name, f"loss {first:.3f} -> {last:.3f} ({last / first - 1:+.0%})", last < 0.8 * first)


def gpu_metrics_claim(scrapes: list[str]) -> Claim:
    """The nanogpt_gpu_* families in 10 Hz scrapes: every reading present, the memory figures,
    utilisation, power, temperature and SM clock above 0 at their highest; no exporter errors."""
    peak: dict[str, float] = {}
    errors = 0.0
    for body in scrapes:
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name.startswith("nanogpt_gpu_"):
                    key = sample.name.removeprefix("nanogpt_gpu_").removesuffix("_bytes")
                    key = key.removeprefix("memory_") if key.startswith("memory_") else key
                    peak[key] = max(peak.get(key, -math.inf), sample.value)
                elif sample.name == "nanogpt_exporter_errors_total":
                    errors = max(errors, sample.value)
    wanted = (*NONZERO, "utilization_ratio", "power_watts", "temperature_celsius", "sm_clock_hertz")
    missing = [k for k in (*wanted, "throttle_reasons") if k not in peak]
    zero = [k for k in wanted if peak.get(k, 0) <= 0]
    figure = (f"{len(scrapes)} scrapes; peak util {peak.get('utilization_ratio', math.nan):.0%}, "
              f"reserved {peak.get('reserved', math.nan) / 2**30:.2f} GiB, power {peak.get('power_watts', math.nan):.0f} W"
              + (f"; missing {', '.join(missing)}" if missing else "") + (f"; zero {', '.join(zero)}" if zero else "")
              + (f"; {errors:.0f} exporter errors" if errors else ""))
    return Claim("GPU metrics present and non-zero (10 Hz scrapes)", figure, bool(scrapes) and not missing
                 and not zero and errors == 0)


def sync_claim(probe: dict, log_interval: int, eval_interval: int, iters: int) -> Claim:
    """No sync warning in an iteration that is not a log point (nanoGPT's own syncs are there)."""
    def log_point(it: int) -> bool:
        return it % log_interval == 0 or it % eval_interval == 0 or it == iters
    steps = [it for it in probe.get("iterations", []) if not log_point(it)]
    inside = [s for s in probe.get("syncs", []) if s["iteration"] is None or not log_point(s["iteration"])]
    at_log = len(probe.get("syncs", [])) - len(inside)
    sites = sorted({s["site"] for s in inside})[:2]
    figure = f"{len(inside)} syncs in {len(steps)} steps between log points ({at_log} at log points)"
    ok = probe.get("exit") == 0 and probe.get("cuda") and bool(steps) and not inside
    return Claim('no host-device sync between log points (set_sync_debug_mode("warn"))',
                 figure + (f"; first: {'; '.join(sites)}" if sites else ""), bool(ok))


def throughput_claim(on: list[Run], off: list[Run]) -> Claim:
    rate_on = statistics.median(r for run in on for r in run.rates) if all(r.rates for r in on) else math.nan
    rate_off = statistics.median(r for run in off for r in run.rates) if all(r.rates for r in off) else math.nan
    ratio = rate_on / rate_off
    return Claim("tokens/s metrics on (10 Hz scrapes) / off >= 0.99",
                 f"{ratio:.3f} (on {rate_on:,.0f}, off {rate_off:,.0f} tok/s; {len(on)}+{len(off)} runs interleaved)",
                 ratio >= 0.99)


def mfu_claim(runs: list[Run], device_name: str, peak_flops: Optional[float]) -> Claim:
    low, high = MFU_PLAUSIBLE
    title = f"MFU plausible for the device ({low:.1%}..{high:.0%})"
    if peak_flops is None:
        return Claim(title, f"no MFU: {device_name} is NOT in the peak table (nanogpt/device.py)", False)
    mfus = [m for run in runs for m in run.mfus]
    mfu = statistics.median(mfus) if mfus else math.nan
    return Claim(title, f"{mfu:.1%} of {peak_flops / 1e12:.0f} TFLOP/s ({device_name}, peak from the table)",
                 low <= mfu <= high)


def oom_claim(run: Run) -> Claim:
    errors = [line for line in run.output.splitlines() if line.startswith("error:")]
    ok = run.exit == 1 and len(errors) == 1 and "CUDA out of memory" in errors[0] and "Traceback" not in run.output
    figure = f"exit {run.exit}: {errors[0][:110] if errors else 'no error line'}"
    return Claim("CUDA OOM: one error line with the figures, exit 1", figure, ok)


def table(rows: list[Claim]) -> str:
    """The report: one row per claim, `result | claim | figure`, then a summary line."""
    width = max(len(r.claim) for r in rows)
    lines = [f"{'result':<6}  {'claim':<{width}}  figure", f"{'-' * 6}  {'-' * width}  {'-' * 6}"]
    lines += [f"{'PASS' if r.ok else 'FAIL':<6}  {r.claim:<{width}}  {r.figure}" for r in rows]
    lines.append(f"{sum(r.ok for r in rows)}/{len(rows)} claims hold")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="iterations of each training run")
    parser.add_argument("--data-file", type=Path, default=None,
                        help="corpus (default: tiny Shakespeare from ../shared/data if present, else the offline "
                             "default corpus; the machine needs no network)")
    parser.add_argument("extra", nargs="*", help="flags passed to every trainer run (after --)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check here; "
              "run scripts/gpu_check.sh on a machine with an NVIDIA GPU. Skipped.")
        return 0
    from nanogpt.device import known_peak_flops

    try:
        import pynvml  # noqa: F401 (the trainer's NVML readings need it)
    except ImportError:
        print("gpu_check: nvidia-ml-py is not installed (pip install -e '.[gpu]'): NVML's GPU metrics will be "
              "missing and that claim fails", flush=True)

    started, device = time.monotonic(), torch.device("cuda:0")
    name = torch.cuda.get_device_name(device)
    corpus = args.data_file or (SHARED_CORPUS if SHARED_CORPUS.is_file() else None)
    data_flags = [f"--data-file={corpus}"] if corpus else ["--dataset=python-docs"]
    print(f"gpu_check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}; corpus: "
          f"{corpus or 'the default corpus (python-docs, offline)'}; shakespeare-char preset, {args.iters} iterations "
          "per run, compile off", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        def flags(tag: str, *more: str) -> list[str]:
            return ["--preset=shakespeare-char", *data_flags, f"--out_dir={tmp}/{tag}", f"--data_cache_dir={tmp}/cache",
                    "--device=cuda:0", f"--max_iters={args.iters}", "--eval_iters=20", "--log_interval=10",
                    "--compile=False", *more, *args.extra]

        on, off = [], []
        for i, metrics in enumerate((False, True, True, False)):  # interleaved: no drift bias
            run = train(flags(f"bf16-{i}", "--dtype=bfloat16"), metrics)
            (on if metrics else off).append(run)
            print(f"  bf16 run {i + 1}/4 (metrics {'on' if metrics else 'off'}): exit {run.exit}, "
                  f"{statistics.median(run.rates) if run.rates else math.nan:,.0f} tok/s", flush=True)
        fp16 = train(flags("fp16", "--dtype=float16"), metrics=True)
        print(f"  fp16 run: exit {fp16.exit}", flush=True)
        probe_iters, probe_out = 60, Path(tmp) / "syncs.json"
        probe_run = train([*flags("sync", "--dtype=bfloat16"), f"--max_iters={probe_iters}",
                           "--eval_interval=1000"], metrics=True, command=("bench.sync_probe", str(probe_out)))
        probe = json.loads(probe_out.read_text()) if probe_out.is_file() else {"exit": probe_run.exit}
        total = torch.cuda.get_device_properties(device).total_memory
        oom_batch = total // (256 * 384 * 2) // 4  # a quarter of the device in one (B, T, C) bf16 activation
        oom = train(flags("oom", "--dtype=bfloat16", f"--batch_size={oom_batch}", "--max_iters=1"), metrics=False)
    rows = [
        loss_claim(f"bf16: {args.iters} iterations, loss falling", on[0], args.iters),
        loss_claim(f"fp16 + GradScaler: {args.iters} iterations, loss falling", fp16, args.iters),
        sync_claim(probe, log_interval=10, eval_interval=1000, iters=probe_iters),
        gpu_metrics_claim(on[0].scrapes + on[1].scrapes),
        throughput_claim(on, off),
        mfu_claim(on + off, name, known_peak_flops(device, "bfloat16")),
        oom_claim(oom),
    ]
    print(table(rows))
    print(f"gpu_check: {time.monotonic() - started:.0f} s")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
