"""Every Prometheus metric the exporter serves: name, type, HELP, labels, buckets.

This module only declares and labels metrics on a registry it is given; it
holds no training logic (that is `exporter.monitor`) and serves nothing (that
is `exporter.server`). Every training series carries `run_id` and `rank`, and
is created up front so it exists from the first scrape. Values not known yet
(a loss before the first log point, an MFU before enough steps were timed)
start as NaN, never as a made-up 0.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LABELS = ("run_id", "rank")

# SPEC: nanogpt_training_state{state=...}; the first state is the initial one.
STATES = ("starting", "running", "finished", "failed")

# SPEC: nanogpt_model_parameters{component=...}; tied weights are counted once.
PARAMETER_COMPONENTS = (
    "total", "token_embedding", "position_embedding", "attention", "mlp", "layernorm", "lm_head",
)

# SPEC: nanogpt_model_config{field=...}; other numeric fields the trainer sends are added when seen.
CONFIG_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")

# SPEC: nanogpt_run_info keys (besides run_id and rank); node is the node rank under torchrun (GROUP_RANK).
INFO_KEYS = ("dataset", "device", "dtype", "world_size", "node", "version")

# Seconds per iteration: from ~1 ms (a tiny CPU model) to 10 min (huge gradient accumulation).
ITERATION_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf,
)


@dataclass(frozen=True)
class TrainingMetrics:
    """The labelled children of every exporter metric, bound to one run_id and rank."""

    iteration: Gauge
    max_iterations: Gauge
    iterations: Counter
    tokens: Counter
    train_loss: Gauge
    train_loss_ema: Gauge
    logged_loss: Summary
    eval_loss_train: Gauge
    eval_loss_val: Gauge
    eval_duration: Gauge
    learning_rate: Gauge
    grad_norm: Gauge
    iteration_duration: Histogram
    mfu: Gauge
    loss_nonfinite: Counter
    last_iteration_timestamp: Gauge
    last_checkpoint_timestamp: Gauge
    checkpoint_failures: Counter
    start_time: Gauge
    state: dict  # state name -> Gauge child (1 for the current state, 0 for the others)
    parameters: Gauge  # the parent: .labels(run_id, rank, component)
    model_config: Gauge  # the parent: .labels(run_id, rank, field)
    run_info: Info
    exporter_errors: Counter
    scrape_duration: Gauge
    run_id: str
    rank: str

    def set_state(self, state: str) -> None:
        """Make `state` the one current training state (ValueError for an unknown one)."""
        if state not in self.state:
            raise ValueError(f"unknown training state {state!r}; expected one of {', '.join(STATES)}")
        for name, child in self.state.items():
            child.set(1 if name == state else 0)

    def set_parameter_count(self, component: str, count: float) -> None:
        self.parameters.labels(self.run_id, self.rank, component).set(count)

    def set_config_field(self, field: str, value: float) -> None:
        self.model_config.labels(self.run_id, self.rank, field).set(value)


def create_metrics(registry: CollectorRegistry, run_id: str, rank: int) -> TrainingMetrics:
    """Register every exporter metric on `registry` (plus the process, platform and GC
    collectors) and return its children for this run_id and rank."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry, platform=platform)
    GCCollector(registry=registry)
    labels = (run_id, str(rank))

    def gauge(name: str, help_text: str, initial: float = math.nan) -> Gauge:
        child = Gauge(name, help_text, LABELS, registry=registry).labels(*labels)
        child.set(initial)
        return child

    def counter(name: str, help_text: str) -> Counter:
        return Counter(name, help_text, LABELS, registry=registry).labels(*labels)

    eval_loss = Gauge("nanogpt_eval_loss", "Mean loss of the last evaluation (estimate_loss) on a split.",
                      (*LABELS, "split"), registry=registry)
    state = Gauge("nanogpt_training_state",
                  "Training state: 1 for the current state (starting, running, finished, failed), else 0.",
                  (*LABELS, "state"), registry=registry)
    parameters = Gauge("nanogpt_model_parameters",
                       "Model parameter count per component (tied weights counted once; total is their sum).",
                       (*LABELS, "component"), registry=registry)
    model_config = Gauge("nanogpt_model_config",
                         "Model configuration value per field (n_layer, n_head, n_embd, block_size, vocab_size, "
                         "dropout).", (*LABELS, "field"), registry=registry)
    run_info = Info("nanogpt_run", "The run: dataset, device, dtype, world size, node rank and nanogpt-monitor version.",
                    LABELS, registry=registry).labels(*labels)
    metrics = TrainingMetrics(
        iteration=gauge("nanogpt_iteration", "Current iteration number (continues after a resume).", 0),
        max_iterations=gauge("nanogpt_max_iterations", "Target iteration count of the run.", 0),
        iterations=counter("nanogpt_iterations", "Iterations completed by this process."),
        tokens=counter("nanogpt_tokens", "Tokens trained on by this rank."),
        train_loss=gauge("nanogpt_train_loss", "Training loss at the last logged iteration (NaN when not finite)."),
        train_loss_ema=gauge(
            "nanogpt_train_loss_ema",
            "Debiased exponential moving average (beta 0.9, TensorBoard-style) of the finite logged training losses."),
        logged_loss=Summary(
            "nanogpt_logged_loss",
            "Every finite logged training loss: rate(_sum[w]) / rate(_count[w]) is the exact mean over a window.",
            LABELS, registry=registry).labels(*labels),
        eval_loss_train=eval_loss.labels(*labels, "train"),
        eval_loss_val=eval_loss.labels(*labels, "val"),
        eval_duration=gauge("nanogpt_eval_duration_seconds", "Wall time of the last evaluation."),
        learning_rate=gauge("nanogpt_learning_rate", "Learning rate at the last logged iteration."),
        grad_norm=gauge("nanogpt_grad_norm",
                        "Gradient norm before clipping at the last logged iteration (NaN when clipping is off)."),
        iteration_duration=Histogram(
            "nanogpt_iteration_duration_seconds",
            "Wall time between consecutive completed iterations on this rank, one observation per iteration "
            "(evaluations and checkpoints included at the iterations that run them).",
            LABELS, registry=registry, buckets=ITERATION_DURATION_BUCKETS).labels(*labels),
        mfu=gauge("nanogpt_mfu_ratio", "Model FLOPs utilisation estimate, 0..1 (NaN until enough steps were timed)."),
        loss_nonfinite=counter("nanogpt_loss_nonfinite", "Logged iterations whose training loss was NaN or infinite."),
        last_iteration_timestamp=gauge("nanogpt_last_iteration_timestamp_seconds",
                                       "Unix time the last iteration completed (the run's start time until one has).", 0),
        last_checkpoint_timestamp=gauge("nanogpt_last_checkpoint_timestamp_seconds",
                                        "Unix time the last checkpoint was saved (0 before the first).", 0),
        checkpoint_failures=counter("nanogpt_checkpoint_failures",
                                    "Checkpoint saves that failed (disk full, out_dir not writable); the previous "
                                    "checkpoint is kept and training goes on."),
        start_time=gauge("nanogpt_training_start_time_seconds", "Unix time the run (this process) started.", 0),
        state={name: state.labels(*labels, name) for name in STATES},
        parameters=parameters,
        model_config=model_config,
        run_info=run_info,
        exporter_errors=counter("nanogpt_exporter_errors",
                                "Exceptions caught inside the exporter (logged once per site, never raised into "
                                "training)."),
        scrape_duration=gauge("nanogpt_exporter_scrape_duration_seconds",
                              "Time the exporter took to render the previous /metrics answer.", 0),
        run_id=labels[0],
        rank=labels[1],
    )
    metrics.set_state(STATES[0])
    metrics.eval_loss_train.set(math.nan)
    metrics.eval_loss_val.set(math.nan)
    for component in PARAMETER_COMPONENTS:
        metrics.set_parameter_count(component, math.nan)
    for field in CONFIG_FIELDS:
        metrics.set_config_field(field, math.nan)
    run_info.info({key: "" for key in INFO_KEYS})
    return metrics
