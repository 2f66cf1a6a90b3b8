"""Reading back what a training process recorded, as the monitor process reads it, in the test's own process.

A TrainingMonitor only records (exporter.shared's mmap files and exporter.journal's
lines in its run directory); what /metrics, /api/status and the page show is what
exporter.node.NodeMonitor makes of that directory. `read_back(monitor)` is that
NodeMonitor for a monitor (one per monitor, so the errors the reading side counts
add up); each access polls first, as each HTTP request does. Where a monitor
process serves the directory, read it over HTTP instead (`Served`): a second
NodeMonitor on the same directory would remove the serving one's own files.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Optional

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.node import NodeMonitor
from exporter.runview import RunView
from tests.support.procs import http_get, http_json


class Recorded:
    """A run directory as the monitor process sees it: `value()` is a /metrics sample, `view()` a rank's API."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.node = NodeMonitor(self.directory)

    def _catch_up(self) -> None:
        """Poll until every journal is read (the server replays a long one in parts)."""
        self.node.poll()
        while self.node.behind:
            self.node.poll()

    def view(self, rank: int = 0) -> RunView:
        """The rank's replayed state (status(), history, model(), csv_lines()), after a poll."""
        self._catch_up()
        view = self.node.view(rank)
        assert view is not None, f"rank {rank} recorded nothing into {self.directory}"
        return view

    def value(self, name: str, /, **labels: str) -> Optional[float]:
        """One sample of the monitor's /metrics registry (None where absent), after a poll. (`name`
        is positional: the GPU families have a label called name.)"""
        self._catch_up()
        return self.node.registry.get_sample_value(name, labels)

    def exposition(self) -> str:
        """The /metrics text (Prometheus' text format), after a poll."""
        self._catch_up()
        return generate_latest(self.node.registry).decode()

    def families(self) -> dict:
        """Family name -> prometheus-client Metric, as the registry collects them (names as registered:
        counters without `_total`, info without `_info`), after a poll."""
        self._catch_up()
        return {family.name: family for family in self.node.registry.collect()}


_READERS: "weakref.WeakKeyDictionary[object, Recorded]" = weakref.WeakKeyDictionary()


def read_back(monitor) -> Recorded:
    """The Recorded of a TrainingMonitor's run directory (the same one on every call for a monitor)."""
    recorded = _READERS.get(monitor)
    if recorded is None:
        recorded = _READERS[monitor] = Recorded(monitor.directory)
    return recorded


def scraped_value(text: str, name: str, /, **labels: str) -> Optional[float]:
    """The value of sample `name` with exactly `labels` in a /metrics text, None where absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


class Served:
    """What a monitor process serves at `url` (http://HOST:PORT), read over HTTP."""

    def __init__(self, url: str):
        self.url = url

    def value(self, name: str, /, **labels: str) -> Optional[float]:
        """One sample of /metrics, None where absent."""
        return scraped_value(http_get(f"{self.url}/metrics").decode(), name, **labels)

    def status(self) -> dict:
        return http_json(f"{self.url}/api/status")

    def points(self) -> list[dict]:
        """/api/history's points, oldest first."""
        return http_json(f"{self.url}/api/history")["points"]

    def model(self) -> dict:
        return http_json(f"{self.url}/api/model")
