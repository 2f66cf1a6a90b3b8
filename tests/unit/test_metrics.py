"""exporter.metrics: every SPEC metric, labelled run_id and rank, exists from the first scrape of the
monitor that reads the rank's shared files (tests/support/recorded.py reads them as it does)."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import TrainingMonitor
from exporter.catalogue import BY_KEY, ITERATION_DURATION_BUCKETS, LABELS, PARAMETER_COMPONENTS, STATES
from exporter.shared import SharedFiles
from tests.support.recorded import Recorded, read_back
from tests.support.spec import SPEC_METRICS


@pytest.fixture
def fresh(tmp_path):
    """Makes a monitor recording into the test's run directory, before any event: (recorded, its metrics)."""

    def make(run_id="r1", rank=0):
        monitor = TrainingMonitor(run_id=run_id, rank=rank, directory=tmp_path / "run")
        return read_back(monitor), monitor.metrics

    return make


def samples(recorded):
    """name -> list of (labels, value, type) from the text exposition, as Prometheus would parse it."""
    out = {}
    for family in text_string_to_metric_families(recorded.exposition()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value, family.type))
    return out


@pytest.mark.parametrize("name", sorted(SPEC_METRICS))
def test_every_spec_metric_exists_before_any_event_with_run_id_and_rank(fresh, name):
    recorded, _ = fresh("run-42", 3)
    found = samples(recorded).get(name)
    assert found, f"{name} missing from the first scrape"
    extra = SPEC_METRICS[name][1]
    for labels, _, _ in found:
        assert labels["run_id"] == "run-42" and labels["rank"] == "3"
        if extra:
            assert extra in labels


def test_the_summary_has_no_quantiles(fresh):
    recorded, _ = fresh()
    assert not [s for s in samples(recorded).get("nanogpt_logged_loss", []) if "quantile" in s[0]]


def test_unknown_values_start_as_nan_and_counts_as_zero(fresh):
    recorded, _ = fresh()
    got = samples(recorded)
    assert math.isnan(got["nanogpt_train_loss"][0][1])
    assert got["nanogpt_iterations_total"][0][1] == 0
    assert {labels["component"] for labels, _, _ in got["nanogpt_model_parameters"]} == set(PARAMETER_COMPONENTS)


def test_training_state_has_exactly_one_current_state(fresh):
    recorded, metrics = fresh()
    metrics.set_state("running")
    states = {labels["state"]: value for labels, value, _ in samples(recorded)["nanogpt_training_state"]}
    assert states == {s: (1.0 if s == "running" else 0.0) for s in STATES}


def test_an_unknown_state_is_refused(fresh):
    _, metrics = fresh()
    with pytest.raises(ValueError, match="unknown training state 'paused'"):
        metrics.set_state("paused")


def test_step_duration_buckets_cover_milliseconds_to_minutes():
    finite = [b for b in ITERATION_DURATION_BUCKETS if math.isfinite(b)]
    assert finite == sorted(finite)
    assert finite[0] <= 0.001 and finite[-1] >= 300
    assert ITERATION_DURATION_BUCKETS[-1] == math.inf


def test_the_trainer_s_process_figures_carry_its_run_id_and_rank(fresh):
    recorded, _ = fresh("r1", 2)
    got = samples(recorded)
    [(labels, _, _)] = got["process_cpu_seconds_total"]  # read from the trainer's /proc by the monitor
    assert labels == {"run_id": "r1", "rank": "2"}
    assert "python_info" in got  # the monitor process's own platform figures


def test_two_ranks_in_one_run_directory_keep_their_own_series(fresh):
    recorded, metrics_0 = fresh("r1", 0)
    fresh("r1", 1)
    metrics_0.iterations.inc(5)
    assert recorded.value("nanogpt_iterations_total", run_id="r1", rank="0") == 5
    assert recorded.value("nanogpt_iterations_total", run_id="r1", rank="1") == 0  # nothing summed across ranks


def test_a_gauge_is_the_newest_write_of_its_series_whichever_file_holds_it(fresh):
    # how the monitor marks a dead trainer failed: it writes the same series into its own file
    recorded, metrics = fresh()
    metrics.set_state("running")
    metric, other = BY_KEY["state"], SharedFiles(recorded.directory, "other")
    for state in STATES:
        other.value("gauge", metric.name, metric.name, (*LABELS, metric.label), ("r1", "0", state), metric.help,
                    initial=float(state == "failed"))
    assert recorded.value("nanogpt_training_state", run_id="r1", rank="0", state="failed") == 1
    assert recorded.value("nanogpt_training_state", run_id="r1", rank="0", state="running") == 0
    metrics.set_state("finished")  # newer again
    assert recorded.value("nanogpt_training_state", run_id="r1", rank="0", state="finished") == 1


def test_a_value_written_after_its_file_grew_is_read_back(tmp_path):
    files = SharedFiles(tmp_path, "rank0")
    first = files.value("gauge", "nanogpt_x", "nanogpt_x", ("key",), ("first",), "x")
    for i in range(8000):  # ~2 MiB of keys: past the file's first size, so it is remapped larger
        files.value("gauge", "nanogpt_x", "nanogpt_x", ("key",), (f"v{i:04d}",), "x" * 100)
    first.set(42.0)
    recorded = Recorded(tmp_path)
    assert recorded.value("nanogpt_x", key="first") == 42.0
