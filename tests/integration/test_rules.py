"""Prometheus and Alertmanager configuration: promtool and amtool accept it, the
rule unit tests pass, and the rules define the loss trend as exporter/trend.py does."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter import catalogue, trend
from tests.support.procs import PROMETHEUS_RULES, REPO, require
from tests.support.rules import ALERT_RULES, RECORDING_RULES, plateau_parameters, rules, write_scaled_rules

PROMETHEUS = REPO / "prometheus"
SPEC_ALERTS = {"NanoGPTLossPlateau", "NanoGPTLossNotFinite", "NanoGPTTrainingStalled",
               "NanoGPTValLossRising", "NanoGPTExporterDown", "NanoGPTLossSpike",
               "NanoGPTGradNormSpike", "NanoGPTLowGoodput", "NanoGPTInputBound",
               "NanoGPTStragglerRank"}  # fmt: skip


def run_tool(*args: str | Path) -> str:
    """Run a promtool/amtool command; fail the test with its output unless it succeeds."""
    result = subprocess.run([require(str(args[0])), *map(str, args[1:])], capture_output=True, text=True,
                            cwd=PROMETHEUS, timeout=120)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_prometheus_config_is_valid_and_finds_the_rule_files():
    output = run_tool("promtool", "check", "config", "prometheus.yml")
    assert f"SUCCESS: {len(list(PROMETHEUS_RULES.glob('*.yml')))} rule files found" in output
    assert "WARNING" not in output


def test_rule_files_are_valid():
    run_tool("promtool", "check", "rules", *sorted(PROMETHEUS_RULES.glob("*.yml")))


def test_rule_unit_tests_pass():
    output = run_tool("promtool", "test", "rules", *sorted((PROMETHEUS / "tests").glob("*.yml")))
    assert "FAILED" not in output


def test_every_alert_of_the_spec_has_severity_run_id_and_annotations():
    alerts = rules(ALERT_RULES)
    assert set(alerts) == SPEC_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        for text in rule["annotations"].values():
            assert "{{ $labels.run_id }}" in text, f"{name}: {text}"


def test_plateau_rules_agree_with_the_exporters_trend():
    params = plateau_parameters()
    assert params.window_seconds == trend.WINDOW_SECONDS
    assert params.threshold == trend.THRESHOLD
    assert params.alert_threshold == trend.THRESHOLD
    assert params.min_points == trend.MIN_POINTS


def test_plateau_alert_waits_for_two_windows_and_rides_out_noise():
    params = plateau_parameters()
    assert params.warmup_seconds == 2 * params.window_seconds
    assert params.for_seconds >= params.window_seconds / 2


def test_the_recorded_state_code_numbers_the_catalogue_states_in_order():
    expr = rules(RECORDING_RULES)["nanogpt:training_state:code"]["expr"]
    codes = re.findall(r'state="(\w+)"\} == 1\) \* (\d+)', expr)
    assert [(state, int(code)) for state, code in codes] == [(s, i) for i, s in enumerate(catalogue.STATES)]


def test_test_sized_rules_are_valid_and_scaled(tmp_path):
    paths = write_scaled_rules(tmp_path, factor=60)
    run_tool("promtool", "check", "rules", *paths)
    recording, alerts = rules(paths[0]), rules(paths[1])
    assert "[10000ms] offset 10000ms" in recording["nanogpt:loss_mean:previous_window"]["expr"]
    assert "start_time_seconds >= 20\n" in alerts["NanoGPTLossPlateau"]["expr"]
    assert alerts["NanoGPTLossPlateau"]["for"] == "10000ms"


def test_alertmanager_config_is_valid():
    output = run_tool("amtool", "check-config", "alertmanager.yml")
    assert "1 receivers" in output


def test_alertmanager_commented_receiver_examples_are_valid(tmp_path):
    # Uncommenting the webhook, Slack and e-mail examples must give a valid config.
    text = (PROMETHEUS / "alertmanager.yml").read_text()
    uncommented = re.sub(r"^  # (- |  )", r"  \1", text, flags=re.MULTILINE)
    (tmp_path / "alertmanager.yml").write_text(uncommented)
    output = run_tool("amtool", "check-config", tmp_path / "alertmanager.yml")
    assert "4 receivers" in output


def test_alertmanager_groups_by_run_and_routes_by_severity():
    route = yaml.safe_load((PROMETHEUS / "alertmanager.yml").read_text())["route"]
    assert "run_id" in route["group_by"]
    severities = {m for r in route["routes"] for m in r["matchers"]}
    assert severities == {'severity="critical"', 'severity="warning"'}


@pytest.mark.parametrize("path", sorted((PROMETHEUS / "targets").rglob("*.yml")), ids=lambda p: p.name)
def test_file_sd_target_files_are_target_groups(path: Path):
    groups = yaml.safe_load(path.read_text())
    assert isinstance(groups, list)
    for group in groups:
        assert set(group) <= {"targets", "labels"}
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in group["targets"]), group
        assert all(re.fullmatch(r"[a-zA-Z_]\w*", name) for name in group.get("labels", {})), group
