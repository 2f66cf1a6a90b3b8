"""The provisioned Grafana dashboards as data: panels, their queries, variables, and running
those queries on a real Prometheus as Grafana would.

Read-only helpers for tests/unit/test_grafana_dashboards.py (static checks),
tests/e2e/test_grafana_queries.py (every query run on a real training) and
tests/e2e/test_gpu_dashboards.py (the GPU panels on backfilled GPU-shaped data).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
UIDS = ("nanogpt-training", "nanogpt-mobile")


def load_dashboards(folder: Path = DASHBOARD_DIR) -> dict[str, dict]:
    """uid -> dashboard JSON for every *.json in `folder`."""
    boards = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return {board["uid"]: board for board in boards}


def panels(board: dict) -> list[dict]:
    """Every panel, rows included, and the panels of collapsed rows."""
    found = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets(board: dict) -> list[tuple[str, dict]]:
    """(panel title, target) for every query of every panel."""
    return [(panel.get("title", ""), target) for panel in panels(board) for target in panel.get("targets", [])]


def variables(board: dict) -> dict[str, dict]:
    """name -> template variable."""
    return {v["name"]: v for v in board.get("templating", {}).get("list", [])}


def variable_query(variable: dict) -> str:
    """The query text of a query variable (Grafana 11 stores it as {"query": ...} or a plain string)."""
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


def parse_label_values(text: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` -> (selector or None, label); ValueError for other forms."""
    m = LABEL_VALUES.match(text.strip())
    if not m:
        raise ValueError(f"not a label_values() query: {text}")
    return m.group("match"), m.group("label")


# Series only a GPU run (nanogpt_gpu_*) or NVIDIA's DCGM exporter (DCGM_*) makes.
GPU_SERIES = re.compile(r"\b(?:nanogpt_gpu_\w+|DCGM_\w+)")


def is_gpu_query(expr: str) -> bool:
    """Whether a panel query reads device series, which a CPU run never has."""
    return bool(GPU_SERIES.search(expr))


# Series only several ranks under gloo make: the all-reduce wait and what is recorded from it.
RANKS_SERIES = re.compile(r"\b(?:nanogpt:rank_busy_seconds_per_iteration\w*|nanogpt:rank_relative_step_time\w*|"
                          r"nanogpt_allreduce_wait_seconds\w*)")


def is_ranks_query(expr: str) -> bool:
    """Whether a panel query compares ranks by their all-reduce wait, which one process never has."""
    return bool(RANKS_SERIES.search(expr))


def generator_module(name: str):
    """A module of the grafana/ package (e.g. "gpu_panels")."""
    return importlib.import_module(f"grafana.{name}")


# A test-only alert that fires for every running process, so the panels that list
# ALERTS{run_id=...} have a firing alert to show (the project's alerts need minutes).
ALWAYS_FIRING = {"groups": [{"name": "grafana-panel-test", "rules": [{
    "alert": "GrafanaPanelTestAlwaysFiring", "expr": 'nanogpt_training_state{state="running"} == 1',
    "labels": {"severity": "info"}, "annotations": {"summary": "test alert for the ALERTS panels"}}]}]}

# What Prometheus must have seen before every panel can show something: evaluations and
# checkpoints changing, the recorded ETA, the test alert, a recorded step-time rate, the
# recorded process CPU and the recorded shares of the wall clock (rate rules need two
# scrapes in their window, and each rule group is evaluated on its own schedule).
PANEL_DATA_READY = ('changes(nanogpt_eval_loss{split="val"}[5m]) > 0',
                    "changes(nanogpt_last_checkpoint_timestamp_seconds[5m]) > 0",
                    "nanogpt:eta_seconds", 'ALERTS{alertstate="firing"}',
                    'nanogpt:run_iteration_duration_seconds_bucket:rate1m{le="+Inf"} > 0',
                    "nanogpt:process_cpu_seconds:rate1m",
                    "nanogpt:goodput_ratio:rate5m", "nanogpt:data_wait_ratio:rate5m")
# ... and, for the straggler panels and the spike annotation, a rank against the median (the
# all-reduce wait of two gloo ranks) and a loss spike.
DDP_PANEL_DATA_READY = (*PANEL_DATA_READY, "nanogpt:rank_relative_step_time:rate5m", "nanogpt_loss_spikes_total > 0")


def substitute(expr: str, run_id: str, range_seconds: int, scrape_seconds: int = 1, step_seconds: int | None = None,
               rank: str = ".*") -> str:
    """`expr` with Grafana's variables as Grafana sets them for one selection of run_id (a value or a regex)
    and rank ("All" is `.*`), a time range, the datasource's scrape interval and the query step."""
    step = step_seconds or scrape_seconds
    values = {
        "$__rate_interval": f"{max(4 * scrape_seconds, step + scrape_seconds)}s",  # Grafana's definition
        "$__interval_ms": str(1000 * step), "$__interval": f"{step}s",
        "$__range_s": str(range_seconds), "$__range": f"{range_seconds}s",
        "$run_id": run_id, "$rank": rank,
    }
    for name, value in values.items():  # longest names first, so $__interval never eats $__interval_ms
        expr = expr.replace(name, value)
    assert "$" not in expr.replace('"$1"', ""), f"unsubstituted variable in {expr}"
    return expr


def annotations_without_data(prometheus, run_id: str, start: float, end: float, scrape_seconds: int) -> list[str]:
    """Run every annotation query of every dashboard over [start, end] as Grafana's Prometheus
    datasource does (a range query at the annotation's step); a line for each that marks nothing.
    Grafana marks an event where a series has a non-zero value."""
    failures = []
    for uid, board in load_dashboards().items():
        for annotation in board.get("annotations", {}).get("list", []):
            step = int(annotation["step"].removesuffix("s"))
            expr = substitute(annotation["expr"], run_id, int(end - start) + 1, scrape_seconds, step)
            first = end - step * int((end - start) / step)  # step points counted back from `end`
            result = prometheus.query_range(expr, first, end, step=step)
            if not any(float(value) != 0 for series in result for _, value in series["values"]):
                failures.append(f"{uid} / annotation {annotation['name']}: nothing marked by {expr}")
    return failures


def queries_without_data(prometheus, run_id: str, start: float, end: float, scrape_seconds: int,
                         select=lambda expr: True) -> list[str]:
    """Run every selected panel query of every dashboard over [start, end] (instant ones at `end`),
    step one scrape; returns a line for each that gave no series."""
    # Step points counted back from `end` (as Grafana aligns them): the newest samples are covered.
    start = end - scrape_seconds * int((end - start) / scrape_seconds)
    failures = []
    for uid, board in load_dashboards().items():
        for title, target in targets(board):
            if not select(target["expr"]):
                continue
            expr = substitute(target["expr"], run_id, int(end - start) + 1, scrape_seconds)
            if target.get("instant"):
                data = prometheus.api("query", query=expr, time=end)
                result = data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]
            else:
                result = prometheus.query_range(expr, start, end, step=scrape_seconds)
            if not result:
                failures.append(f"{uid} / {title} / {target['refId']}: no series for {expr}")
    return failures
