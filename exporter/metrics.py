"""Registers the catalogue's metrics on a registry and binds them to one run_id and rank.

What each metric is (name, type, HELP, labels, buckets) lives in
`exporter.catalogue` and only there; this module turns that data into
prometheus-client objects. It holds no training logic (that is
`exporter.monitor`) and serves nothing (that is `exporter.server`). Every
series is created up front so it exists from the first scrape. Values not known
yet (a loss before the first log point, an MFU before enough steps were timed)
start as NaN, never as a made-up 0.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, Summary
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .catalogue import LABELS, REGISTERED, STATES, Metric

__all__ = ["TrainingMetrics", "create_metrics"]

_CLASSES = {"gauge": Gauge, "counter": Counter, "summary": Summary, "histogram": Histogram, "info": Info}


class Labelled:
    """A family with one label besides run_id and rank: `family[value]` is that value's child."""

    def __init__(self, parent, run_id: str, rank: str):
        self.parent, self._labels = parent, (run_id, rank)

    def __getitem__(self, value: str):
        return self.parent.labels(*self._labels, value)


class TrainingMetrics:
    """The children of every catalogue metric for one run_id and rank, as attributes named by
    `Metric.key` (e.g. `metrics.train_loss.set(x)`, `metrics.eval_loss["val"].set(x)`)."""

    def __init__(self, children: dict, run_id: str, rank: str):
        self.__dict__.update(children)
        self.run_id, self.rank = run_id, rank

    def set_state(self, state: str) -> None:
        """Make `state` the one current training state (ValueError for an unknown one)."""
        if state not in STATES:
            raise ValueError(f"unknown training state {state!r}; expected one of {', '.join(STATES)}")
        for name in STATES:
            self.state[name].set(1 if name == state else 0)

    def set_parameter_count(self, component: str, count: float) -> None:
        self.parameters[component].set(count)

    def set_config_field(self, field: str, value: float) -> None:
        self.model_config[field].set(value)


def _register(metric: Metric, registry: CollectorRegistry, run_id: str, rank: str):
    """One catalogue entry -> its child (or a Labelled family), with its initial values set."""
    options = {"buckets": metric.buckets} if metric.kind == "histogram" else {}
    labels = (*LABELS, metric.label) if metric.label else LABELS
    parent = _CLASSES[metric.kind](metric.name, metric.help, labels, registry=registry, **options)
    if metric.kind == "info":
        child = parent.labels(run_id, rank)
        child.info({key: "" for key in metric.values})
        return child
    if metric.label:
        family = Labelled(parent, run_id, rank)
        for value in metric.values:
            child = family[value]  # created now, so it is in the first scrape
            if metric.kind == "gauge" and metric.initial is not None:
                child.set(metric.initial)
        return family
    child = parent.labels(run_id, rank)
    if metric.kind == "gauge" and metric.initial is not None:
        child.set(metric.initial)
    return child


def create_metrics(registry: CollectorRegistry, run_id: str, rank: int) -> TrainingMetrics:
    """Register every catalogue metric except the per-GPU ones (nanogpt_monitor.gpu collects those)
    on `registry`, plus the process, platform and GC collectors; return the children for this run_id and rank."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry, platform=platform)
    GCCollector(registry=registry)
    run_id, rank = str(run_id), str(rank)
    children = {metric.key: _register(metric, registry, run_id, rank) for metric in REGISTERED}
    metrics = TrainingMetrics(children, run_id, rank)
    metrics.set_state(STATES[0])
    return metrics
