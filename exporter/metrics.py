"""Binds the catalogue's metrics to one run_id and rank, as values in that rank's shared files.

Every series is created up front so it exists from the first scrape; values not known yet (a loss
before the first log point, an MFU without a known peak) start as NaN, never as a made-up 0. Two
families are not written here: `nanogpt_run_info` (mmap files carry no Info; the monitor makes it
from the journal) and the per-GPU families (`device_value` writes them when a device collector is
read).
"""

from __future__ import annotations

from .catalogue import LABELS, REGISTERED, STATES, Metric
from .shared import SharedFiles, SharedHistogram, SharedSummary, SharedValue

__all__ = ["TrainingMetrics", "create_metrics", "sample_name", "SHARED"]

SHARED = tuple(m for m in REGISTERED if m.kind != "info")  # the families the training process writes


def sample_name(metric: Metric) -> str:
    """The name of a gauge's or counter's one sample, as written (and read back) in the shared files."""
    return metric.name + "_total" if metric.kind == "counter" else metric.name


def _child(files: SharedFiles, metric: Metric, labelnames: tuple, labelvalues: tuple):
    if metric.kind == "histogram":
        return SharedHistogram(files, metric.name, metric.help, labelnames, labelvalues, metric.buckets)
    if metric.kind == "summary":
        return SharedSummary(files, metric.name, metric.help, labelnames, labelvalues)
    initial = metric.initial if metric.kind == "gauge" and metric.initial is not None else 0.0
    return files.value(metric.kind, metric.name, sample_name(metric), labelnames, labelvalues, metric.help,
                       initial)


class Labelled:
    """A family with one label besides run_id and rank: `family[value]` is that value's child,
    created on first use."""

    def __init__(self, files: SharedFiles, metric: Metric, run_id: str, rank: str):
        self._files, self._metric, self._labels = files, metric, (run_id, rank)
        self._children: dict[str, object] = {}

    def __getitem__(self, value: str):
        child = self._children.get(value)
        if child is None:
            labelnames = (*LABELS, self._metric.label)
            child = self._children[value] = _child(self._files, self._metric, labelnames, (*self._labels, value))
        return child


class WhenMeasured:
    """A family without labels besides run_id and rank whose child is created at its first value."""

    def __init__(self, files: SharedFiles, metric: Metric, run_id: str, rank: str):
        self._files, self._metric, self._labels = files, metric, (run_id, rank)
        self._child = None

    def inc(self, amount: float = 1.0) -> None:
        if self._child is None:
            self._child = _child(self._files, self._metric, LABELS, self._labels)
        self._child.inc(amount)


class TrainingMetrics:
    """The children of every shared catalogue metric for one run_id and rank, as attributes named
    by `Metric.key` (e.g. `metrics.train_loss.set(x)`, `metrics.eval_loss["val"].set(x)`)."""

    def __init__(self, files: SharedFiles, run_id: str, rank: str):
        self.files, self.run_id, self.rank = files, run_id, rank
        for metric in SHARED:
            if metric.label:
                family = Labelled(files, metric, run_id, rank)
                for value in metric.values:
                    family[value]  # created now, so it is in the first scrape
                setattr(self, metric.key, family)
            elif metric.when_measured:
                setattr(self, metric.key, WhenMeasured(files, metric, run_id, rank))
            else:
                setattr(self, metric.key, _child(files, metric, LABELS, (run_id, rank)))
        self._devices: dict[tuple, SharedValue] = {}

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

    def device_value(self, kind: str, family: str, sample: str, help_text: str,
                     labels: dict[str, str]) -> SharedValue:
        """The value of a device collector's sample (a `gpu`-labelled gauge or counter family, the
        collector's running figure set as it is), created on first use."""
        key = (sample, tuple(labels.items()))
        value = self._devices.get(key)
        if value is None:
            value = self._devices[key] = self.files.value(kind, family, sample, tuple(labels),
                                                          tuple(labels.values()), help_text)
        return value


def create_metrics(files: SharedFiles, run_id: str, rank: int) -> TrainingMetrics:
    """Every shared catalogue metric for this run_id and rank, written to `files`, in state "starting"."""
    metrics = TrainingMetrics(files, str(run_id), str(rank))
    metrics.set_state(STATES[0])
    return metrics
