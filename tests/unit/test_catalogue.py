"""exporter.catalogue is the one declaration of every metric: the registry, docs/metrics.md's table,
the dashboards and the rules are derived from it or checked against it."""

import re
from pathlib import Path

import pytest
import yaml

from exporter import catalogue
from exporter import TrainingMonitor
from nanogpt_monitor.gpu import GpuCollector
from tests.support.gpu_double import FakeCuda, FakeGpu, FakeNvml
from tests.support.grafana import load_dashboards, targets
from tests.support.recorded import read_back
from tests.support.spec import SPEC_METRICS

REPO = Path(__file__).resolve().parents[2]
NANOGPT_NAME = re.compile(r"\bnanogpt_[a-z_]+")  # a series name in PromQL (recording rules use colons)


@pytest.fixture
def scraped_families(tmp_path):
    """Family name -> (type, samples) of a fresh monitor's first scrape, nanogpt_ families only."""
    monitor = TrainingMonitor(run_id="r", rank=0, directory=tmp_path / "run")
    return {name: (f.type, f.samples) for name, f in read_back(monitor).families().items()
            if name.startswith("nanogpt_")}


# a family whose label values the run chooses has no series until it logs one (nor HELP: mmap files
# hold samples, not families)
CHOSEN_LABELS = {m.name for m in catalogue.REGISTERED if m.label and not m.values}
# a family the loop may not measure has no series until its first value
WHEN_MEASURED = {m.name for m in catalogue.REGISTERED if m.when_measured}


def test_the_registry_serves_exactly_the_catalogue_less_the_per_gpu_families(scraped_families):
    assert CHOSEN_LABELS == {"nanogpt_logged_scalar"}
    assert WHEN_MEASURED == {"nanogpt_allreduce_wait_seconds"}
    later = CHOSEN_LABELS | WHEN_MEASURED
    assert sorted(scraped_families) == sorted(m.name for m in catalogue.REGISTERED if m.name not in later)
    for metric in catalogue.REGISTERED:
        if metric.name not in later:
            assert scraped_families[metric.name][0] == metric.kind, metric.name


def test_a_logged_value_s_family_is_the_catalogue_s(tmp_path):
    monitor = TrainingMonitor(run_id="r", rank=0, directory=tmp_path / "run")
    monitor.log(iteration=0, loss=4.0, scalars={"epoch": 0.0})
    family = read_back(monitor).families()["nanogpt_logged_scalar"]
    metric = catalogue.BY_KEY["logged_scalar"]
    assert (family.type, family.documentation) == (metric.kind, metric.help)
    assert [set(s.labels) for s in family.samples] == [set(metric.labels)]


def test_the_allreduce_wait_appears_with_its_first_measured_value(tmp_path):
    monitor = TrainingMonitor(run_id="r", rank=0, directory=tmp_path / "run")
    monitor.iteration(1, 64, timestamp=100.0)
    assert "nanogpt_allreduce_wait_seconds" not in read_back(monitor).families()
    monitor.iteration(2, 64, timestamp=101.0, sync_seconds=0.25)
    family = read_back(monitor).families()["nanogpt_allreduce_wait_seconds"]
    assert (family.type, [s.value for s in family.samples]) == ("counter", [0.25])


def test_the_gpu_collector_serves_exactly_the_catalogue_gpu_families(tmp_path):
    # on an NVML-shaped double: every reading present, so every family shows once a log point read it
    monitor = TrainingMonitor(run_id="r", rank=0, directory=tmp_path / "run")
    device = FakeGpu()
    monitor.add_device_collector(GpuCollector(monitor, ["cuda:0"], cuda=FakeCuda([device]), nvml=FakeNvml([device])))
    monitor.log(iteration=0, loss=4.0)
    families = {name: f for name, f in read_back(monitor).families().items() if name.startswith("nanogpt_gpu_")}
    assert sorted(families) == sorted(m.name for m in catalogue.GPU_METRICS)
    for metric in catalogue.GPU_METRICS:
        family = families[metric.name]
        assert (family.type, family.documentation) == (metric.kind, metric.help), metric.name
        assert {frozenset(s.labels) for s in family.samples} == {frozenset(metric.labels)}, metric.name
        if metric.label:
            assert {s.labels[metric.label] for s in family.samples} == set(metric.values)


def test_every_family_is_either_registered_or_per_gpu():
    assert set(catalogue.REGISTERED) | set(catalogue.GPU_METRICS) == set(catalogue.METRICS)
    assert all(m.name.startswith("nanogpt_gpu_") == (m.source == "gpu") for m in catalogue.METRICS)


@pytest.mark.parametrize("metric", [m for m in catalogue.REGISTERED if m.label and m.values], ids=lambda m: m.name)
def test_declared_label_values_exist_from_the_first_scrape(scraped_families, metric):
    _, samples = scraped_families[metric.name]
    assert {s.labels[metric.label] for s in samples if metric.label in s.labels} == set(metric.values)


def test_info_keys_are_the_declared_ones(scraped_families):
    metric = catalogue.BY_KEY["run_info"]
    _, samples = scraped_families[metric.name]
    assert set(samples[0].labels) == {*catalogue.LABELS, *metric.values}


def test_every_spec_metric_is_in_the_catalogue():
    assert set(SPEC_METRICS) <= set(catalogue.exposed_names())


def test_the_docs_metrics_table_is_the_generated_one():
    doc = (REPO / "docs" / "metrics.md").read_text()
    assert catalogue.markdown_table() in doc, "docs/metrics.md's table is stale: run `python -m exporter.catalogue`"


def test_every_metric_a_dashboard_queries_is_in_the_catalogue():
    known = catalogue.exposed_names()
    for uid, board in load_dashboards().items():
        for title, target in targets(board):
            for name in NANOGPT_NAME.findall(target.get("expr", "")):
                assert name in known, f"{uid} panel {title!r} queries {name}, which the catalogue does not declare"


def test_every_metric_a_rule_reads_is_in_the_catalogue():
    known = catalogue.exposed_names()
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                for name in NANOGPT_NAME.findall(rule["expr"]):
                    assert name in known, f"{path.name} rule {rule.get('alert') or rule.get('record')} reads {name}"


def test_the_dashboards_state_mapping_is_the_catalogue_s():
    from grafana import panels  # noqa: the generator's own module

    assert panels.STATES is catalogue.STATES
