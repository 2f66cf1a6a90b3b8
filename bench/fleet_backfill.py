"""A day of a simulated fleet as Prometheus blocks, for bench/fleet.py's 24-hour query timings.

Writes what `ranks` ranks would have exposed over the last `hours` hours as OpenMetrics text, one
file per 2-hour block aligned to block boundaries (so promtool reads each file once), and turns
each into a block with `promtool tsdb create-blocks-from openmetrics`, while the next file is
being written. Every rank has the series the exporter serves that the dashboards and rules read
(histogram buckets included), `up` and the Kubernetes target labels a PodMonitor adds. The
recording rules' outputs are written too, with plausible values, because Prometheus cannot
evaluate rules into the past cheaply and the dashboards read them; their values do not change
what a query costs. The resolution (`step`) is a parameter: query cost grows with samples read.
"""

from __future__ import annotations

import math
import subprocess
import threading
from pathlib import Path

from tests.support.procs import require

BLOCK_SECONDS = 7200
RANKS_PER_RUN, RANKS_PER_POD = 64, 8
BUCKETS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
           "30.0", "60.0", "120.0", "300.0", "600.0", "+Inf")
COMPONENTS = ("total", "token_embedding", "position_embedding", "attention", "mlp", "layernorm", "lm_head")
FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")
STATES = ("starting", "running", "finished", "failed")
STEP_SECONDS = 0.5  # simulated seconds per iteration
# each rank's wall clock by phase, as shares of the time since its start (startup a fixed minute)
PHASE_SHARES = {"step": 0.93, "data_wait": 0.01, "eval": 0.03, "checkpoint": 0.03, "lost": 0.0}
STARTUP_SECONDS, ALLREDUCE_SHARE = 60.0, 0.45


def series_of_rank(start: float):
    """(name, extra labels, value(t)) for every series one rank has; t is unix seconds."""
    it = lambda t: (t - start) / STEP_SECONDS  # noqa: E731
    loss = lambda t: 1.2 + 3.0 * math.exp(-(t - start) / 20000)  # noqa: E731
    gauges = [
        ("up", "", lambda t: 1), ("nanogpt_iteration", "", it), ("nanogpt_max_iterations", "", lambda t: 300_000),
        ("nanogpt_train_loss", "", loss), ("nanogpt_train_loss_ema", "", loss),
        ("nanogpt_eval_loss", ',split="train"', loss), ("nanogpt_eval_loss", ',split="val"', lambda t: loss(t) * 1.05),
        ("nanogpt_learning_rate", "", lambda t: 6e-4), ("nanogpt_grad_norm", "", lambda t: 1.0),
        ("nanogpt_mfu_ratio", "", lambda t: 0.4), ("nanogpt_last_iteration_timestamp_seconds", "", lambda t: t),
        ("nanogpt_last_checkpoint_timestamp_seconds", "", lambda t: t - t % 600),
        ("nanogpt_training_start_time_seconds", "", lambda t: start),
        ("nanogpt_eval_duration_seconds", "", lambda t: 2.0), ("nanogpt_exporter_scrape_duration_seconds", "", lambda t: 0.001),
        ("process_resident_memory_bytes", "", lambda t: 2.1e9), ("scrape_duration_seconds", "", lambda t: 0.004),
        *((("nanogpt_training_state", f',state="{s}"', (lambda t, s=s: float(s == "running"))) for s in STATES)),
        *((("nanogpt_model_parameters", f',component="{c}"', lambda t: 1e7)) for c in COMPONENTS),
        *((("nanogpt_model_config", f',field="{f}"', lambda t: 12.0)) for f in FIELDS),
        ("nanogpt_run_info", ',dataset="openwebtext",device="cuda",dtype="bfloat16",world_size="64",exported_node="0",version="0.1.0"',
         lambda t: 1),
        # counters
        ("nanogpt_iterations_total", "", it), ("nanogpt_tokens_total", "", lambda t: it(t) * 8192),
        ("nanogpt_loss_nonfinite_total", "", lambda t: 0), ("nanogpt_exporter_errors_total", "", lambda t: 0),
        ("nanogpt_checkpoint_failures_total", "", lambda t: 0),
        ("nanogpt_loss_spikes_total", "", lambda t: 0), ("nanogpt_grad_norm_spikes_total", "", lambda t: 0),
        ("nanogpt_time_seconds_total", ',phase="startup"', lambda t: STARTUP_SECONDS),
        *((("nanogpt_time_seconds_total", f',phase="{p}"', (lambda t, share=share: (t - start) * share)))
          for p, share in PHASE_SHARES.items()),
        ("nanogpt_allreduce_wait_seconds_total", "", lambda t: (t - start) * ALLREDUCE_SHARE),
        ("process_cpu_seconds_total", "", lambda t: (t - start) * 0.9),
        ("nanogpt_logged_loss_sum", "", lambda t: it(t) / 10 * 2.0), ("nanogpt_logged_loss_count", "", lambda t: it(t) / 10),
        ("nanogpt_iteration_duration_seconds_sum", "", lambda t: it(t) * STEP_SECONDS),
        ("nanogpt_iteration_duration_seconds_count", "", it),
        *((("nanogpt_iteration_duration_seconds_bucket", f',le="{b}"', (lambda t, b=b: it(t) if float(b) >= 0.5 else 0)))
          for b in BUCKETS),
        # recording rules (see the module docstring)
        ("nanogpt:tokens_per_second:rate1m", "", lambda t: 16384), ("nanogpt:iterations_per_second:rate1m", "", lambda t: 2),
        ("nanogpt:eta_seconds", "", lambda t: (300_000 - it(t)) * STEP_SECONDS),
        ("nanogpt:progress_ratio", "", lambda t: it(t) / 300_000), ("nanogpt:loss_mean:window", "", loss),
        ("nanogpt:loss_mean:previous_window", "", lambda t: loss(t - 600)),
        ("nanogpt:loss_improvement_ratio", "", lambda t: 0.02), ("nanogpt:loss_trend", "", lambda t: 1),
        ("nanogpt:training_state:code", "", lambda t: 1), ("nanogpt:process_cpu_seconds:rate1m", "", lambda t: 0.9),
        ("nanogpt:process_resident_memory_bytes", "", lambda t: 2.1e9),
        ("nanogpt:data_wait_ratio:rate5m", "", lambda t: PHASE_SHARES["data_wait"] / 0.94),
        ("nanogpt:rank_busy_seconds_per_iteration:rate5m", "", lambda t: STEP_SECONDS * (0.94 - ALLREDUCE_SHARE)),
        ("nanogpt:rank_relative_step_time:rate5m", "", lambda t: 1.0),
        ("nanogpt:iteration_duration_seconds:p99_rate10m", "", lambda t: STEP_SECONDS),
    ]
    return gauges


def series_of_run(ranks: int):
    """(name, extra labels, value(t)) for the run-level recording rules' series of a run of `ranks` ranks."""
    return [*(("nanogpt:run_iteration_duration_seconds_bucket:rate1m", f',le="{b}"',
               (lambda t, b=b: ranks / STEP_SECONDS if float(b) >= STEP_SECONDS else 0.0)) for b in BUCKETS),
            *(("nanogpt:time_share:rate5m", f',phase="{p}"', (lambda t, share=share: share))
              for p, share in {"startup": 0.0, **PHASE_SHARES}.items()),
            ("nanogpt:goodput_ratio:rate5m", "", lambda t: PHASE_SHARES["step"]),
            ("nanogpt:goodput_ratio:run", "", lambda t: PHASE_SHARES["step"])]


def rank_labels(rank: int) -> tuple[str, str]:
    """(run_id, target labels) of a global rank, as a PodMonitor labels a pod's port."""
    run, local = divmod(rank, RANKS_PER_RUN)
    pod = rank // RANKS_PER_POD
    labels = (f'job="nanogpt",instance="10.{pod // 250}.{pod % 250}.{local % RANKS_PER_POD}:{8000 + local % 8}",'
              f'namespace="ml",pod="fleet-{run:03d}-{local // RANKS_PER_POD}-x7k2p",node="gpu-node-{pod:04d}",'
              f'run_id="fleet-{run:03d}",rank="{local}"')  # fmt: skip
    return f"fleet-{run:03d}", labels


def write_chunk(path: Path, ranks: int, start: float, times: list[int]) -> int:
    """OpenMetrics text of every series of every rank and run at `times` (families kept together); returns samples."""
    labels = [rank_labels(r)[1] for r in range(ranks)]
    runs = sorted({rank_labels(r)[0] for r in range(ranks)})
    series = [(name, extra, value, labels) for name, extra, value in series_of_rank(start)]
    series += [(name, extra, value, [f'job="nanogpt",run_id="{run}"' for run in runs])
               for name, extra, value in series_of_run(min(ranks, RANKS_PER_RUN))]
    samples = 0
    with open(path, "w") as f:
        for name, extra, value, label_sets in series:
            for label_set in label_sets:
                prefix = f"{name}{{{label_set}{extra}}} "
                f.write("".join(f"{prefix}{value(t):.6g} {t}\n" for t in times))
                samples += len(times)
        f.write("# EOF\n")
    return samples


def backfill(data_dir: Path, work: Path, ranks: int, hours: float, step: int, end: float) -> dict:
    """Blocks for `ranks` ranks over [end - hours, end) at `step` seconds into data_dir; returns figures."""
    promtool = require("promtool")
    first = int(end - hours * 3600)
    start = first - 3600  # the runs started an hour before the window
    bounds = list(range(first - first % BLOCK_SECONDS, int(end), BLOCK_SECONDS))
    samples, errors, pending = 0, [], None

    def convert(path: Path):
        result = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(path), str(data_dir)],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            errors.append(result.stderr[-2000:])
        path.unlink()

    for i, lower in enumerate(bounds):
        times = list(range(max(lower, first), min(lower + BLOCK_SECONDS, int(end)), step))
        path = work / f"chunk-{i:02d}.om"
        samples += write_chunk(path, ranks, start, times)
        if pending is not None:
            pending.join()
        pending = threading.Thread(target=convert, args=(path,))  # promtool on one core, Python on the other
        pending.start()
    pending.join()
    if errors:
        raise RuntimeError("promtool failed:\n" + "\n".join(errors))
    runs = -(-ranks // RANKS_PER_RUN)
    return {"samples": samples, "series": ranks * len(series_of_rank(start)) + runs * len(series_of_run(RANKS_PER_RUN)),
            "blocks": len(bounds)}
