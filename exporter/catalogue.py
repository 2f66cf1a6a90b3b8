"""The metric catalogue: every metric the exporter serves, declared once, as data.

Each entry gives the name as registered, its type, HELP text, the labels it carries besides
`run_id` and `rank`, and the label values that exist from the first scrape. It imports no client
library, so anything (the dashboard generator, a test) can read it; `python -m exporter.catalogue`
prints the metrics table of docs/metrics.md. /metrics also carries prometheus-client's process (per
trainer) and platform collectors, which are not listed here.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

# Every training series carries these; run_id is one per run, like `instance`.
LABELS = ("run_id", "rank")

# SPEC: nanogpt_training_state{state=...}; the first state is the initial one.
STATES = ("starting", "running", "finished", "failed")

# SPEC: nanogpt_model_parameters{component=...}; tied weights are counted once. Only "total" exists
# from the first scrape: the run adds its components when it starts, nanoGPT's trainer these
# (GPT.parameter_counts), any other model its top-level module paths (nanogpt_monitor.model_view).
PARAMETER_COMPONENTS = ("total",)
NANOGPT_COMPONENTS = ("token_embedding", "position_embedding", "attention", "mlp", "layernorm", "lm_head")

# nanogpt_logged_scalar{key=...}: distinct names kept, so user-chosen labels stay bounded.
MAX_LOGGED_SCALARS = 64

# SPEC: nanogpt_model_config{field=...}; other numeric fields the trainer sends are added when seen.
CONFIG_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")

# SPEC: nanogpt_run_info keys (besides run_id and rank); node is the node rank under torchrun (GROUP_RANK).
INFO_KEYS = ("dataset", "device", "dtype", "world_size", "node", "version")

# Seconds per iteration: from ~1 ms (a tiny CPU model) to 10 min (huge gradient accumulation).
ITERATION_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf,
)

# SPEC (issue 21): nanogpt_time_seconds_total{phase=...}, where each second of a rank's wall clock
# went (exporter.phases says how each is measured); "step" is the productive one (goodput).
PHASES = ("startup", "step", "data_wait", "eval", "checkpoint", "lost")

KINDS = ("gauge", "counter", "summary", "histogram", "info")

# Where a family's samples come from. "monitor": registered by exporter.metrics, present from the
# first scrape. "gpu": read at each log point, one series per CUDA device the trainer uses, by the
# torch-side collector nanogpt_monitor.gpu; absent where there is no GPU (or no NVML, for NVML's).
SOURCES = ("monitor", "gpu")

# Labels of every "gpu" family besides run_id and rank: the CUDA device index the trainer uses
# (cuda:N, as torch numbers it), the device UUID (joins DCGM's `UUID` label) and its product name.
GPU_LABELS = ("gpu", "uuid", "name")

# SPEC (issue 13): nanogpt_gpu_throttle_reasons{reason=...}, NVML's clock event reasons, 1 when active.
THROTTLE_REASONS = (
    "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
    "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "display_clock_setting",
)


@dataclass(frozen=True)
class Metric:
    """One metric family. `key` names it in code (TrainingMetrics attributes)."""

    key: str
    name: str  # as registered: counters without `_total`, info without `_info` (the client adds them)
    kind: str  # one of KINDS
    help: str
    label: str | None = None  # the one label besides run_id and rank, if any
    values: tuple[str, ...] = ()  # that label's values present from the first scrape (info: its keys)
    initial: float | None = math.nan  # gauges only: the value before any event (NaN = not known yet)
    buckets: tuple[float, ...] = ()  # histograms only
    source: str = "monitor"  # one of SOURCES
    # created at its first value, not up front: absent where the loop does not measure it (a 0 there
    # would claim a measurement)
    when_measured: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label name of its series (histogram `le` and info keys aside)."""
        device = GPU_LABELS if self.source == "gpu" else ()
        return (*LABELS, *device, *((self.label,) if self.label else ()))

    @property
    def exposed(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this family (what PromQL queries)."""
        suffixes = {"gauge": ("",), "counter": ("_total",), "summary": ("_sum", "_count"),
                    "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}[self.kind]
        return tuple(self.name + suffix for suffix in suffixes)


METRICS: tuple[Metric, ...] = (
    Metric("iteration", "nanogpt_iteration", "gauge",
           "Current iteration number (continues after a resume).", initial=0),
    Metric("max_iterations", "nanogpt_max_iterations", "gauge", "Target iteration count of the run.", initial=0),
    Metric("iterations", "nanogpt_iterations", "counter", "Iterations completed by this process."),
    Metric("tokens", "nanogpt_tokens", "counter", "Tokens trained on by this rank."),
    Metric("train_loss", "nanogpt_train_loss", "gauge",
           "Training loss at the last logged iteration (NaN when not finite)."),
    Metric("train_loss_ema", "nanogpt_train_loss_ema", "gauge",
           "Debiased exponential moving average (beta 0.9, TensorBoard-style) of the finite logged training "
           "losses."),
    Metric("logged_loss", "nanogpt_logged_loss", "summary",
           "Every finite logged training loss: rate(_sum[w]) / rate(_count[w]) is the exact mean over a window."),
    Metric("eval_loss", "nanogpt_eval_loss", "gauge",
           "Mean loss of the last evaluation (estimate_loss) on a split.", label="split", values=("train", "val")),
    Metric("eval_duration", "nanogpt_eval_duration_seconds", "gauge", "Wall time of the last evaluation."),
    Metric("learning_rate", "nanogpt_learning_rate", "gauge", "Learning rate at the last logged iteration."),
    Metric("grad_norm", "nanogpt_grad_norm", "gauge",
           "Gradient norm before clipping at the last logged iteration (NaN when clipping is off)."),
    Metric("iteration_duration", "nanogpt_iteration_duration_seconds", "histogram",
           "Wall time between consecutive completed iterations on this rank, one observation per iteration "
           "(evaluations and checkpoints included at the iterations that run them).",
           buckets=ITERATION_DURATION_BUCKETS),
    Metric("mfu", "nanogpt_mfu_ratio", "gauge",
           "Model FLOPs utilisation estimate, 0..1 (NaN until enough steps were timed)."),
    Metric("loss_nonfinite", "nanogpt_loss_nonfinite", "counter",
           "Logged iterations whose training loss was NaN or infinite."),
    Metric("first_nonfinite_iteration", "nanogpt_loss_first_nonfinite_iteration", "gauge",
           "Iteration of the first NaN or infinite training loss this process logged (NaN before one): the "
           "lowest across ranks says which rank saw it first."),
    Metric("loss_spikes", "nanogpt_loss_spikes", "counter",
           "Logged training losses more than N standard deviations above the mean of the last logged ones "
           "(default 6 sigma over 128; exporter.spikes); /api/status says the last one's iteration."),
    Metric("grad_norm_spikes", "nanogpt_grad_norm_spikes", "counter",
           "Logged grad norms more than N standard deviations above the mean of the last logged ones, "
           "judged as the loss is; often the first sign of a loss spike."),
    Metric("time", "nanogpt_time_seconds", "counter",
           "Wall-clock seconds of this rank by phase: startup (process start to the first iteration), step, "
           "data_wait (getting batches), eval, checkpoint, and lost (iterations a resume redoes); step / all is "
           "the goodput.", label="phase", values=PHASES),
    Metric("allreduce_wait", "nanogpt_allreduce_wait_seconds", "counter",
           "Of the step time, seconds this rank waited in DDP's gradient all-reduce after its own gradients were "
           "ready: long on fast ranks, short on a straggler. Measured where the host waits for it (gloo); absent "
           "elsewhere.", when_measured=True),
    Metric("last_iteration_timestamp", "nanogpt_last_iteration_timestamp_seconds", "gauge",
           "Unix time the last iteration completed (the run's start time until one has).", initial=0),
    Metric("last_checkpoint_timestamp", "nanogpt_last_checkpoint_timestamp_seconds", "gauge",
           "Unix time the last checkpoint was saved (0 before the first).", initial=0),
    Metric("checkpoint_failures", "nanogpt_checkpoint_failures", "counter",
           "Checkpoint saves that failed (disk full, out_dir not writable); the previous checkpoint is kept and "
           "training goes on."),
    Metric("start_time", "nanogpt_training_start_time_seconds", "gauge",
           "Unix time the run (this process) started.", initial=0),
    Metric("state", "nanogpt_training_state", "gauge",
           "Training state: 1 for the current state (starting, running, finished, failed), else 0.",
           label="state", values=STATES, initial=None),
    Metric("parameters", "nanogpt_model_parameters", "gauge",
           "Model parameter count per component (tied weights counted once; total is their sum): nanoGPT's "
           + ", ".join(NANOGPT_COMPONENTS) + "; another model's top-level modules (e.g. transformer.h, lm_head).",
           label="component", values=PARAMETER_COMPONENTS),
    Metric("model_config", "nanogpt_model_config", "gauge",
           "Model configuration value per field (n_layer, n_head, n_embd, block_size, vocab_size, dropout).",
           label="field", values=CONFIG_FIELDS),
    Metric("logged_scalar", "nanogpt_logged_scalar", "gauge",
           "Last value of another scalar the training code logged, by its key (Lightning's self.log, Hugging Face "
           f"Trainer log entries); at most {MAX_LOGGED_SCALARS} names.", label="key"),
    Metric("run_info", "nanogpt_run", "info",
           "The run: dataset, device, dtype, world size, node rank and nanogpt-monitor version.", values=INFO_KEYS),
    Metric("exporter_errors", "nanogpt_exporter_errors", "counter",
           "Exceptions caught inside the exporter (logged once per site, never raised into training)."),
    Metric("scrape_duration", "nanogpt_exporter_scrape_duration_seconds", "gauge",
           "Time the node's monitor process took to render /metrics, the last time it did (shown by the "
           "next scrape).", initial=0),
    # Per GPU, read at each log point (nothing is added to the training step). torch.cuda: this process.
    Metric("gpu_memory_allocated", "nanogpt_gpu_memory_allocated_bytes", "gauge",
           "Device memory held by this process's tensors (torch.cuda.memory_allocated).", source="gpu"),
    Metric("gpu_memory_reserved", "nanogpt_gpu_memory_reserved_bytes", "gauge",
           "Device memory reserved by this process's caching allocator (torch.cuda.memory_reserved).",
           source="gpu"),
    Metric("gpu_memory_peak_allocated", "nanogpt_gpu_memory_peak_allocated_bytes", "gauge",
           "Peak device memory held by this process's tensors since it started "
           "(torch.cuda.max_memory_allocated).", source="gpu"),
    Metric("gpu_allocator_retries", "nanogpt_gpu_allocator_retries", "counter",
           "Times this process's caching allocator failed a cudaMalloc, freed its cached blocks and retried "
           "(torch.cuda.memory_stats num_alloc_retries): memory pressure before an OOM, and slow steps.",
           source="gpu"),
    Metric("gpu_allocator_ooms", "nanogpt_gpu_allocator_ooms", "counter",
           "Out-of-memory errors this process's caching allocator raised (torch.cuda.memory_stats num_ooms), "
           "caught or not.", source="gpu"),
    # NVML: the whole device, every process on it.
    Metric("gpu_memory_used", "nanogpt_gpu_memory_used_bytes", "gauge",
           "Device memory in use by all processes (NVML).", source="gpu"),
    Metric("gpu_memory_total", "nanogpt_gpu_memory_total_bytes", "gauge",
           "Total device memory (NVML; torch's device properties where NVML is missing).", source="gpu"),
    Metric("gpu_utilization", "nanogpt_gpu_utilization_ratio", "gauge",
           "Fraction of the last sample period (1/6 s to 1 s) in which a kernel ran on the GPU, 0..1 (NVML).",
           source="gpu"),
    Metric("gpu_power", "nanogpt_gpu_power_watts", "gauge", "Power draw of the device (NVML).", source="gpu"),
    Metric("gpu_temperature", "nanogpt_gpu_temperature_celsius", "gauge", "GPU core temperature (NVML).",
           source="gpu"),
    Metric("gpu_sm_clock", "nanogpt_gpu_sm_clock_hertz", "gauge", "Current SM clock (NVML).", source="gpu"),
    Metric("gpu_throttle_reasons", "nanogpt_gpu_throttle_reasons", "gauge",
           "1 when NVML reports this reason for holding the clocks down, else 0.", label="reason",
           values=THROTTLE_REASONS, source="gpu"),
)

BY_KEY = {metric.key: metric for metric in METRICS}
REGISTERED = tuple(m for m in METRICS if m.source == "monitor")  # what exporter.metrics creates
GPU_METRICS = tuple(m for m in METRICS if m.source == "gpu")  # what nanogpt_monitor.gpu yields


def exposed_names() -> dict[str, Metric]:
    """Every sample name a scrape shows -> its family (e.g. nanogpt_tokens_total -> tokens)."""
    return {name: metric for metric in METRICS for name in metric.exposed}


def markdown_table() -> str:
    """docs/metrics.md's metrics table, one row per family, as PromQL names it."""
    rows = ["| metric | type | labels besides run_id, rank | meaning |", "| --- | --- | --- | --- |"]
    for m in METRICS:
        name = m.exposed[0] if m.kind in ("counter", "info") else m.name
        labels = f"`{m.label}`: {', '.join(m.values)}" if m.values else f"`{m.label}`" if m.label else ""
        if m.kind == "info":
            labels = ", ".join(m.values)
        if m.kind == "histogram":
            labels = "`le`"
        if m.source == "gpu":
            labels = ", ".join(f"`{name}`" for name in GPU_LABELS) + (f"; {labels}" if labels else "")
        rows.append(f"| `{name}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m exporter.catalogue > table.md
    sys.stdout.write(markdown_table())
