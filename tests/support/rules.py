"""The Prometheus rule files as data, for tests: the plateau's parameters, and test-sized copies.

Tests never hand-copy a rule: they read prometheus/rules/*.yml, and the
end-to-end alert test runs a copy in which every duration (range selectors,
offsets, `for:`, and the few second counts compared with time()) is divided
by one factor, so a 10m window becomes 10s and everything else keeps its
proportion. This module does not start Prometheus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.procs import PROMETHEUS_RULES

RECORDING_RULES = PROMETHEUS_RULES / "nanogpt-recording.yml"
ALERT_RULES = PROMETHEUS_RULES / "nanogpt-alerts.yml"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = r"\d+(?:ms|s|m|h|d|w)"
# Durations inside PromQL: range selectors ([10m], [1h:]) and offsets (offset 10m).
_RANGE_OR_OFFSET = re.compile(rf"(\[|offset\s+)({_DURATION})")
# Plain second counts compared with time(): the plateau warm-up and the stall floor.
_SECONDS_LITERALS = [
    re.compile(r"(time\(\) - nanogpt_training_start_time_seconds >= )(\d+)"),
    re.compile(r"(clamp_min\(.*, )(\d+)(\))"),
]


def seconds(duration: str) -> float:
    """Seconds in a Prometheus duration such as "10m" or "500ms"."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", duration)
    if not match:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def rules(path: Path) -> dict[str, dict]:
    """Every rule of a rule file by its record or alert name."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r.get("record") or r["alert"]: r for g in groups for r in g["rules"]}


@dataclass(frozen=True)
class PlateauParameters:
    """The loss-trend definition as the rule files state it."""

    window_seconds: float  # W, from nanogpt:loss_mean:window
    threshold: float  # T, from nanogpt:loss_trend
    min_points: int  # MIN_POINTS, from nanogpt:loss_improvement_ratio
    alert_threshold: float  # the ratio NanoGPTLossPlateau compares with
    warmup_seconds: float  # run age before NanoGPTLossPlateau may fire
    for_seconds: float  # NanoGPTLossPlateau's `for:`


def plateau_parameters() -> PlateauParameters:
    """Read W, T, MIN_POINTS and the plateau alert's settings out of the rule files."""
    recording, alerts = rules(RECORDING_RULES), rules(ALERT_RULES)
    windows = set(re.findall(r"\[(\w+)\]", recording["nanogpt:loss_mean:window"]["expr"]))
    (window,) = windows
    ratio = recording["nanogpt:loss_improvement_ratio"]["expr"]
    trend = recording["nanogpt:loss_trend"]["expr"]
    plateau = alerts["NanoGPTLossPlateau"]
    return PlateauParameters(
        window_seconds=seconds(window),
        threshold=float(re.search(r"> bool ([\d.]+)", trend).group(1)),
        min_points=int(re.search(r"increase\(nanogpt_logged_loss_count\[\w+\]\) >= (\d+)", ratio).group(1)),
        alert_threshold=float(re.search(r"nanogpt:loss_improvement_ratio <= ([\d.]+)", plateau["expr"]).group(1)),
        warmup_seconds=float(_SECONDS_LITERALS[0].search(plateau["expr"]).group(2)),
        for_seconds=seconds(plateau["for"]),
    )


def _scaled(duration: str, factor: float) -> str:
    return f"{max(1, round(seconds(duration) * 1000 / factor))}ms"


def scale_expr(expr: str, factor: float) -> str:
    """`expr` with every duration and time() second count divided by `factor`."""
    expr = _RANGE_OR_OFFSET.sub(lambda m: m.group(1) + _scaled(m.group(2), factor), expr)
    for pattern in _SECONDS_LITERALS:
        expr = pattern.sub(lambda m: m.group(1) + f"{float(m.group(2)) / factor:g}" + "".join(m.groups()[2:]), expr)
    return expr


def write_scaled_rules(dest: Path, factor: float) -> list[Path]:
    """Copies of the rule files with all durations divided by `factor`, written to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in (RECORDING_RULES, ALERT_RULES):
        document = yaml.safe_load(source.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                rule["expr"] = scale_expr(rule["expr"], factor)
                if "for" in rule:
                    rule["for"] = _scaled(rule["for"], factor)
        path = dest / source.name
        path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
        written.append(path)
    return written
