"""exporter.metrics: every SPEC metric, labelled run_id and rank, exists from the first scrape."""

import math
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalogue import ITERATION_DURATION_BUCKETS, PARAMETER_COMPONENTS, STATES
from exporter.metrics import create_metrics
from tests.support.procs import require

# SPEC.md's metric table: exposed sample name -> (type, extra label that must be present or None)
SPEC_METRICS = {
    "nanogpt_iteration": ("gauge", None),
    "nanogpt_max_iterations": ("gauge", None),
    "nanogpt_iterations_total": ("counter", None),
    "nanogpt_tokens_total": ("counter", None),
    "nanogpt_train_loss": ("gauge", None),
    "nanogpt_train_loss_ema": ("gauge", None),
    "nanogpt_logged_loss_sum": ("summary", None),
    "nanogpt_logged_loss_count": ("summary", None),
    "nanogpt_eval_loss": ("gauge", "split"),
    "nanogpt_learning_rate": ("gauge", None),
    "nanogpt_grad_norm": ("gauge", None),
    "nanogpt_iteration_duration_seconds_bucket": ("histogram", "le"),
    "nanogpt_mfu_ratio": ("gauge", None),
    "nanogpt_loss_nonfinite_total": ("counter", None),
    "nanogpt_last_iteration_timestamp_seconds": ("gauge", None),
    "nanogpt_training_start_time_seconds": ("gauge", None),
    "nanogpt_training_state": ("gauge", "state"),
    "nanogpt_model_parameters": ("gauge", "component"),
    "nanogpt_model_config": ("gauge", "field"),
    "nanogpt_run_info": ("info", "dataset"),
}


def fresh(run_id="r1", rank=0):
    registry = CollectorRegistry()
    return registry, create_metrics(registry, run_id, rank)


def samples(registry):
    """name -> list of (labels, value) from the text exposition, as Prometheus would parse it."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value, family.type))
    return out


@pytest.mark.parametrize("name", sorted(SPEC_METRICS))
def test_every_spec_metric_exists_before_any_event_with_run_id_and_rank(name):
    registry, _ = fresh("run-42", 3)
    found = samples(registry).get(name)
    assert found, f"{name} missing from the first scrape"
    extra = SPEC_METRICS[name][1]
    for labels, _, _ in found:
        assert labels["run_id"] == "run-42" and labels["rank"] == "3"
        if extra:
            assert extra in labels


def test_the_summary_has_no_quantiles():
    registry, _ = fresh()
    assert not [s for s in samples(registry).get("nanogpt_logged_loss", []) if "quantile" in s[0]]


def test_unknown_values_start_as_nan_and_counts_as_zero():
    registry, _ = fresh()
    got = samples(registry)
    assert math.isnan(got["nanogpt_train_loss"][0][1])
    assert got["nanogpt_iterations_total"][0][1] == 0
    assert {labels["component"] for labels, _, _ in got["nanogpt_model_parameters"]} == set(PARAMETER_COMPONENTS)


def test_training_state_has_exactly_one_current_state():
    registry, metrics = fresh()
    metrics.set_state("running")
    states = {labels["state"]: value for labels, value, _ in samples(registry)["nanogpt_training_state"]}
    assert states == {s: (1.0 if s == "running" else 0.0) for s in STATES}


def test_an_unknown_state_is_refused():
    _, metrics = fresh()
    with pytest.raises(ValueError, match="unknown training state 'paused'"):
        metrics.set_state("paused")


def test_step_duration_buckets_cover_milliseconds_to_minutes():
    finite = [b for b in ITERATION_DURATION_BUCKETS if math.isfinite(b)]
    assert finite == sorted(finite)
    assert finite[0] <= 0.001 and finite[-1] >= 300
    assert ITERATION_DURATION_BUCKETS[-1] == math.inf


def test_process_and_python_collectors_are_kept():
    registry, _ = fresh()
    got = samples(registry)
    assert "process_cpu_seconds_total" in got and "python_info" in got and "python_gc_collections_total" in got


def test_two_monitors_do_not_share_a_registry():
    registry_a, metrics_a = fresh("a")
    registry_b, _ = fresh("b")
    metrics_a.iterations.inc()
    assert registry_b.get_sample_value("nanogpt_iterations_total", {"run_id": "b", "rank": "0"}) == 0


def test_promtool_accepts_the_exposition():
    promtool = require("promtool")
    registry, _ = fresh()
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
