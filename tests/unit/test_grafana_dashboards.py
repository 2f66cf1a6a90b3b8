"""The provisioned Grafana dashboards and provisioning files, checked without Grafana (against the
generator and Grafana's own schema: tests/integration/test_grafana_dashboards.py)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support.grafana import (
    REPO, UIDS, generator_module, load_dashboards, panels, parse_label_values, targets, variable_query, variables,
)

BOARDS = load_dashboards()


def each_dashboard():
    return pytest.mark.parametrize("uid", UIDS)


@each_dashboard()
def test_every_panel_query_and_variable_uses_the_prometheus_uid(uid):
    board = BOARDS[uid]
    queried = [p for p in panels(board) if p["type"] not in ("row", "text")]
    assert queried
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
    for title, target in targets(board):
        assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
    for variable in variables(board).values():
        assert variable["datasource"]["uid"] == "prometheus", variable["name"]


@each_dashboard()
def test_dashboard_has_no_import_placeholders(uid):
    text = json.dumps(BOARDS[uid])
    assert "__inputs" not in BOARDS[uid] and "${DS_" not in text


@each_dashboard()
def test_uid_is_at_most_40_characters(uid):
    assert BOARDS[uid]["uid"] == uid and len(uid) <= 40


@each_dashboard()
def test_panels_do_not_overlap_and_fit_the_grid(uid):
    cells: dict[tuple[int, int], str] = {}
    for panel in BOARDS[uid]["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@each_dashboard()
def test_panels_are_in_reading_order(uid):
    # Below 769 px Grafana stacks panels in JSON order: it must match the desktop order.
    positions = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in BOARDS[uid]["panels"]]
    assert positions == sorted(positions)


@each_dashboard()
def test_panel_ids_are_unique(uid):
    ids = [p["id"] for p in panels(BOARDS[uid])]
    assert len(ids) == len(set(ids))


def test_mobile_panels_are_full_width_and_short():
    for panel in BOARDS["nanogpt-mobile"]["panels"]:
        assert panel["gridPos"]["w"] == 24, panel["title"]
        assert panel["gridPos"]["h"] <= 8, panel["title"]


def test_mobile_dashboard_puts_state_first_and_one_loss_chart_last():
    types = [(p["type"], p["title"]) for p in BOARDS["nanogpt-mobile"]["panels"]]
    assert types[0] == ("stat", "Training state")
    assert [t for t, _ in types].count("timeseries") == 1 and types[-1][0] == "timeseries"


@each_dashboard()
def test_run_id_variable_keeps_finished_runs_selectable(uid):
    run_id = variables(BOARDS[uid])["run_id"]
    assert run_id["type"] == "query" and run_id["multi"] is True
    assert run_id["refresh"] == 2  # on time range change: label values over the dashboard's range
    selector, label = parse_label_values(variable_query(run_id))
    assert label == "run_id" and selector


@each_dashboard()
def test_rank_variable_follows_the_selected_runs(uid):
    rank = variables(BOARDS[uid])["rank"]
    selector, label = parse_label_values(variable_query(rank))
    assert label == "rank" and '$run_id' in selector and rank["includeAll"] is True


@each_dashboard()
def test_every_query_filters_by_the_selected_runs(uid):
    for title, target in targets(BOARDS[uid]):
        assert "$run_id" in target["expr"], title


def test_training_dashboard_covers_the_issue_panels():
    titles = {p["title"] for p in panels(BOARDS["nanogpt-training"])}
    for wanted in ("Training state", "Loss", "Loss vs iteration", "Loss trend", "ETA", "Progress",
                   "Iterations / s", "Tokens / s", "Average loss (plateau window)", "Best val loss", "MFU",
                   "Step time p50 / p95", "Learning rate", "Grad norm", "Model shape", "Parameters",
                   "Parameters by component", "Firing alerts", "Process memory", "Process CPU",
                   "Tokens / s per rank", "Non-finite losses", "Trainer live page", "Goodput", "Time by phase",
                   "Rank-seconds by phase", "Spikes", "Step time per rank (all-reduce wait out)",
                   "Ranks against the median", "Data wait per rank", "Allocator retries / OOMs"):
        assert wanted in titles, wanted
    assert any(p["type"] == "table" and "CSV" in p["title"] for p in panels(BOARDS["nanogpt-training"]))


def test_loss_trend_maps_every_rule_value_to_a_name_and_colour():
    trend = next(p for p in panels(BOARDS["nanogpt-mobile"]) if p["title"] == "Loss trend")
    mappings = trend["fieldConfig"]["defaults"]["mappings"]
    values = next(m["options"] for m in mappings if m["type"] == "value")
    assert {k: v["text"] for k, v in values.items()} == {"1": "improving", "0": "plateau", "-1": "rising"}
    assert all(v["color"] for v in values.values())
    assert {m["options"]["match"] for m in mappings if m["type"] == "special"} == {"nan", "null"}


def test_datasource_is_prometheus_by_uid_not_editable_with_the_scrape_interval():
    config = yaml.safe_load((REPO / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [source] = config["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["editable"] is False and source["url"] == "http://prometheus:9090"
    prometheus_yml = REPO / "prometheus" / "prometheus.yml"
    assert prometheus_yml.is_file(), "prometheus/prometheus.yml is missing (the stack's scrape config)"
    scrape = yaml.safe_load(prometheus_yml.read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    interval = jobs["nanogpt"].get("scrape_interval", scrape["global"]["scrape_interval"])
    assert source["jsonData"]["timeInterval"] == interval


def test_dashboard_provider_loads_the_mounted_dashboard_folder():
    config = yaml.safe_load((REPO / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    [provider] = config["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def alert_threshold(name: str) -> float:
    """The number an alert compares against (the last number of its expression)."""
    rules = yaml.safe_load((REPO / "prometheus" / "rules" / "nanogpt-alerts.yml").read_text())
    [expr] = [r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    return float(re.findall(r"[<>]=?\s*([0-9.]+)", expr)[-1])


def test_time_panels_draw_the_alerts_own_thresholds():
    time_panels = generator_module("time_panels")
    assert time_panels.LOW_GOODPUT == alert_threshold("NanoGPTLowGoodput")
    assert time_panels.INPUT_BOUND == alert_threshold("NanoGPTInputBound")
    assert time_panels.STRAGGLER == alert_threshold("NanoGPTStragglerRank")


def test_phone_dashboard_has_the_goodput_stat():
    [goodput] = [p for p in panels(BOARDS["nanogpt-mobile"]) if p["title"] == "Goodput"]
    assert goodput["type"] == "stat" and "nanogpt:goodput_ratio:rate5m" in goodput["targets"][0]["expr"]


def test_straggler_heat_strip_is_one_row_per_rank_not_calculated():
    [strip] = [p for p in panels(BOARDS["nanogpt-training"]) if p["title"] == "Ranks against the median"]
    assert strip["type"] == "heatmap" and strip["options"]["calculate"] is False
    assert strip["options"]["rowsFrame"]["layout"] == "unknown"  # ordinal rows: the ranks
    assert "{{rank}}" in strip["targets"][0]["legendFormat"]


@each_dashboard()
def test_annotations_mark_checkpoints_spikes_and_starts_on_the_loss_chart_alone(uid):
    [loss_chart] = [p["id"] for p in panels(BOARDS[uid]) if p["type"] == "timeseries" and p["title"] == "Loss"]
    found = {a["name"]: a for a in BOARDS[uid]["annotations"]["list"]}
    assert set(found) == {"Checkpoints", "Spikes", "Process starts"}
    for annotation in found.values():
        assert annotation["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        assert annotation["filter"] == {"exclude": False, "ids": [loss_chart]}
        assert "$run_id" in annotation["expr"]
    # a gauge whose value is the time: Grafana reads milliseconds
    assert found["Checkpoints"]["useValueForTime"] and "* 1000" in found["Checkpoints"]["expr"]
