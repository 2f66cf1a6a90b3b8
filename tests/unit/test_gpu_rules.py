"""The GPU alerts (prometheus/rules/nanogpt-gpu-alerts.yml): labelled like the others, and each
threshold written once in the rule, the descriptions quoting the same figure. Their behaviour
(firing, near misses) is proven by promtool on prometheus/tests/gpu.yml (tests/integration/test_rules.py)."""

from __future__ import annotations

import re

import pytest

from tests.support.procs import PROMETHEUS_RULES, REPO
from tests.support.rules import rules, seconds

GPU_ALERTS = PROMETHEUS_RULES / "nanogpt-gpu-alerts.yml"


def test_the_gpu_alerts_are_the_issue_s():
    assert set(rules(GPU_ALERTS)) == {"NanoGPTGPUUnderutilized", "NanoGPTGPUMemoryNearLimit"}


@pytest.mark.parametrize("name", sorted(rules(GPU_ALERTS)))
def test_each_gpu_alert_names_the_run_rank_and_gpu(name):
    rule = rules(GPU_ALERTS)[name]
    assert rule["labels"] == {"severity": "warning"}
    assert set(rule["annotations"]) == {"summary", "description"}
    for text in rule["annotations"].values():
        for label in ("run_id", "rank", "gpu"):
            assert f"{{{{ $labels.{label} }}}}" in text, f"{name}: {text}"
    # run_id, rank, job and instance reach the alert: the left-hand side keeps every label
    # of a trainer series, and each `and` joins on exactly those
    assert re.findall(r"\band on\(([^)]*)\)", rule["expr"]) and all(
        on == "job, instance, run_id, rank" for on in re.findall(r"\bon\(([^)]*)\)", rule["expr"]))


@pytest.mark.parametrize("name, comparison", [("NanoGPTGPUUnderutilized", r"\[5m\]\) < ([\d.]+)"),
                                              ("NanoGPTGPUMemoryNearLimit", r"_total_bytes > ([\d.]+)")])
def test_the_description_quotes_the_rule_s_own_threshold_and_durations(name, comparison):
    rule = rules(GPU_ALERTS)[name]
    threshold = float(re.search(comparison, rule["expr"]).group(1))
    assert f"(threshold {threshold * 100:g}%)" in rule["annotations"]["description"]
    assert f"for at least {rule['for']}" in rule["annotations"]["description"]
    assert seconds(rule["for"]) >= 300  # never on a blip


@pytest.mark.parametrize("doc", ["README.md", "docs/alerts.md", "docs/gpus.md"])
def test_the_docs_list_both_gpu_alerts(doc):
    text = (REPO / doc).read_text()
    for name in rules(GPU_ALERTS):
        assert f"`{name}`" in text, f"{doc} does not mention {name}"
