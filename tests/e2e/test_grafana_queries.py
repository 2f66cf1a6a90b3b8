"""Every query of both Grafana dashboards, run on real data.

A short real training (two gloo ranks under torchrun) is scraped by a real Prometheus (Debian package) that
loads the project's recording and alert rules. Each panel target, with the
template variables substituted as Grafana would, goes through Prometheus' HTTP
API (instant targets to /query, the others to /query_range over the run) and
must parse and return at least one series. Every metric name the dashboards
mention must be in the trainer's /metrics or be a recording rule.
"""

from __future__ import annotations

import re
import sys
import time

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue
from tests.support.grafana import (
    ALWAYS_FIRING, DDP_PANEL_DATA_READY, annotations_without_data, generator_module, is_gpu_query, load_dashboards,
    parse_label_values, queries_without_data, substitute, targets, variable_query, variables,
)
from tests.support.procs import FAULTY_TRAINER, PROMETHEUS_RULES, Prometheus, Trainer, http_get, wait_until

pytestmark = pytest.mark.slow

SCRAPE_SECONDS = 1
# Prometheus makes these itself; the trainer cannot export them.
PROMETHEUS_SERIES = {"ALERTS", "ALERTS_FOR_STATE", "up"}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "bool", "offset", "NaN", "Inf", "nan", "inf"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(trainer, prometheus, start time) once the data every panel needs has been scraped."""
    workdir = tmp_path_factory.mktemp("grafana-queries")
    rules = workdir / "always-firing.yml"
    rules.write_text(yaml.safe_dump(ALWAYS_FIRING))
    trainer = prometheus = None
    try:
        # Two gloo ranks (the straggler panels need the all-reduce wait, measured under gloo) and an
        # lr burst at iteration 501 (between log points) for the spike annotation, injected from
        # outside (tests.support.faulty_train): late enough that Prometheus has scraped the spike
        # counter at 0 before (a series first seen at 1 has no increase). Long enough to stay
        # running while the queries run.
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    *FAULTY_TRAINER[1:]]
        trainer = Trainer(workdir / "trainer", "--max_iters=100000", "--eval_interval=10", "--eval_iters=2",
                          "--log_interval=2", "--gradient_accumulation_steps=2", "--warmup_iters=10",
                          "--lr_burst_at=501", command=torchrun)
        start = time.time()
        prometheus = Prometheus(workdir / "prometheus", [trainer.target], scrape_interval=f"{SCRAPE_SECONDS}s",
                                rule_files=[*sorted(PROMETHEUS_RULES.glob("*.yml")), rules])
        for expr in DDP_PANEL_DATA_READY:
            wait_until(lambda: prometheus.query(expr), timeout=90, interval=0.5, what=f"Prometheus to return {expr}")
        yield trainer, prometheus, start
    finally:
        for process in (prometheus, trainer):
            if process is not None:
                process.stop()


@pytest.fixture(scope="module")
def run_id(stack) -> str:
    trainer, prometheus, _ = stack
    [value] = prometheus.api("label/run_id/values")
    assert re.fullmatch(r"[\w.-]+", value), value  # no regex metacharacters to escape
    return value


def test_every_panel_query_returns_series(stack, run_id):
    # the GPU panels need a GPU: tests/e2e/test_gpu_dashboards.py runs them on backfilled GPU data
    _, prometheus, start = stack
    end = time.time()
    failures = queries_without_data(prometheus, run_id, start, end, SCRAPE_SECONDS,
                                    select=lambda expr: not is_gpu_query(expr))
    assert not failures, "\n".join(failures)


def test_every_annotation_query_marks_something(stack, run_id):
    # a checkpoint at each evaluation, the provoked spike, the processes' starts
    _, prometheus, start = stack
    failures = annotations_without_data(prometheus, run_id, start, time.time(), SCRAPE_SECONDS)
    assert not failures, "\n".join(failures)


def test_variable_queries_list_the_run_and_its_ranks(stack, run_id):
    _, prometheus, start = stack
    for board in load_dashboards().values():
        found = {}
        for name, variable in variables(board).items():
            selector, label = parse_label_values(variable_query(variable))
            # What Grafana's Prometheus datasource asks for label_values() over the time range.
            found[name] = prometheus.api(f"label/{label}/values", **{
                "match[]": substitute(selector, run_id, 3600, SCRAPE_SECONDS), "start": start, "end": time.time()})
        assert found == {"run_id": [run_id], "rank": ["0", "1"]}


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers outside strings, label lists and
    ranges that are neither functions nor PromQL keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in PROMQL_WORDS}


def test_metric_name_extraction_sees_series_and_skips_the_rest():
    expr = ('histogram_quantile(0.9, sum by (le, run_id) (rate(a_bucket{x="y z"}[1m]))) / on (job) '
            'group_left (rank) b:rule offset 5m or vector(0) * NaN')
    assert metric_names(expr) == {"a_bucket", "b:rule"}


def test_every_metric_in_the_dashboards_is_exported_or_recorded(stack):
    trainer, _, _ = stack
    scraped = {sample.name for family in text_string_to_metric_families(
        http_get(f"{trainer.base_url}/metrics").decode()) for sample in family.samples}
    recorded = {rule["record"] for path in PROMETHEUS_RULES.glob("*.yml")
                for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}
    referenced = set()
    for board in load_dashboards().values():
        referenced |= {name for _, target in targets(board) for name in metric_names(target["expr"])}
        referenced |= {name for v in variables(board).values()
                       for name in metric_names(parse_label_values(variable_query(v))[0])}
    assert "nanogpt_train_loss" in referenced and "nanogpt:loss_trend" in referenced
    # a CPU run has no device series: those must be the catalogue's GPU families or DCGM's fields
    device = {name for m in catalogue.GPU_METRICS for name in m.exposed}
    device |= set(generator_module("gpu_panels").DCGM_FIELDS)
    unknown = referenced - scraped - recorded - PROMETHEUS_SERIES - device
    assert not unknown, f"dashboards refer to series nobody makes: {sorted(unknown)}"
