"""The monitor process's view of one node: every rank that records into a run directory, and /metrics.

`NodeMonitor.poll()` (a few times a second) finds new ranks' journals, replays what they gained and
checks that each trainer's process is still alive. A trainer that vanished without reporting an end
(kill -9, the OOM killer) is marked failed on the page, in /api/status and in
nanogpt_training_state, which the monitor overwrites from its own shared file (gauges are "most
recent wins"). /metrics is one registry: prometheus-client's MultiProcessCollector over the
directory (every rank's series as the trainers wrote them), nanogpt_run_info from the journals
(mmap files carry no Info), each trainer's process figures read from its /proc (labelled with its
run_id and rank, since one target holds several processes), and the platform collector.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .catalogue import BY_KEY, INFO_KEYS, LABELS, STATES
from .journal import pid_namespace, rank_of
from .runview import RunView
from .shared import SharedFiles

log = logging.getLogger(__name__)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) said it exists


class NodeMonitor:
    """The ranks recording into `directory`, their replayed state and the /metrics registry."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.views: dict[int, RunView] = {}
        self.pid_namespace = pid_namespace()
        self.generation = 0  # bumped on every change a page or stream may want
        self._error_counters: dict[tuple[str, int], object] = {}  # (run_id, rank) -> our share of its errors
        self._errors_seen: set[tuple[str, str]] = set()
        self.errors = 0
        self.last_ended: Optional[float] = None  # monotonic time every rank seen had ended, if they have
        self.files = SharedFiles(self.directory, "monitor")
        self.files.remove()
        self.placeholder = RunView(self.directory / "none", 0, self.report_error)  # before any rank appears
        self._scrape_gauges: dict[tuple[str, int], object] = {}
        # collectors here describe no names up front (MultiProcessCollector cannot): without this,
        # /metrics?name[]=... (restricted_registry) would find none of them and answer nothing
        self.registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
        MultiProcessCollector(self.registry, path=str(self.directory))
        self.registry.register(_RunInfoCollector(self))
        self.registry.register(_TrainerProcesses(self))
        PlatformCollector(registry=self.registry)

    # --- keeping up with the directory ---------------------------------------------------------

    def poll(self) -> bool:
        """Take in what changed since the last poll; True when anything did."""
        changed = False
        for path in self.directory.glob("rank*.jsonl"):
            rank = rank_of(path)
            if rank is not None and rank not in self.views:
                self.views[rank] = RunView(self.directory, rank, self.report_error)
        for view in list(self.views.values()):
            changed |= view.poll()
            if self._visible(view) and not view.ended and not process_alive(view.pid):
                if view.mark_dead(f"the training process (pid {view.pid}) ended without reporting an end"):
                    self._write_state(view, "failed")
                    log.warning("monitor: rank %d's training process (pid %d) is gone; its run is marked failed",
                                view.rank, view.pid)
                    changed = True
        if changed:
            self.generation += 1
        if self.views and all(v.ended for v in self.views.values()):
            self.last_ended = self.last_ended or time.monotonic()
        else:
            self.last_ended = None
        return changed

    @property
    def behind(self) -> bool:
        """Whether a journal holds more than the last poll read."""
        return any(view.behind for view in list(self.views.values()))

    def _write_state(self, view: RunView, state: str) -> None:
        """nanogpt_training_state as the monitor knows it, newer than the trainer's last write (only
        these series: a value of ours for any other would hide the trainer's own)."""
        metric = BY_KEY["state"]
        try:
            for name in STATES:
                self.files.value("gauge", metric.name, metric.name, (*LABELS, metric.label),
                                 (view.run_id, str(view.rank), name), metric.help, initial=float(name == state))
        except Exception as e:
            self.report_error("state", e)

    def record_scrape(self, seconds: float) -> None:
        """nanogpt_exporter_scrape_duration_seconds of every rank served: what this /metrics took."""
        metric = BY_KEY["scrape_duration"]
        try:
            for view in list(self.views.values()):
                key = (view.run_id, view.rank)
                if key not in self._scrape_gauges:
                    self._scrape_gauges[key] = self.files.value("gauge", metric.name, metric.name, LABELS,
                                                                (view.run_id, str(view.rank)), metric.help)
                self._scrape_gauges[key].set(seconds)
        except Exception as e:
            self.report_error("scrape", e)

    def _visible(self, view: RunView) -> bool:
        """Whether this process can see the trainer's pid: one PID namespace (a Kubernetes pod with
        shareProcessNamespace, or one machine). In another, a pid means another process."""
        return view.pid is not None and view.pid_namespace == self.pid_namespace

    def trainers_alive(self) -> bool:
        """Whether any trainer process recording here still runs; one whose pid this process cannot
        see runs until its journal says it ended."""
        return any(process_alive(view.pid) if self._visible(view) else not view.ended
                   for view in list(self.views.values()))

    @property
    def primary(self) -> Optional[RunView]:
        """The view the page and /api/* show: the lowest rank on this node (rank 0 on node 0)."""
        return self.views[min(self.views)] if self.views else None

    def view(self, rank: Optional[int]) -> Optional[RunView]:
        return self.primary if rank is None else self.views.get(rank)

    def report_error(self, site: str, error: Exception) -> None:
        """Count a monitor error and log it the first time this site fails this way; never raises."""
        try:
            self.errors += 1
            view = self.primary
            if view is not None:  # added to the trainer's own count of that series (counters sum up)
                key = (view.run_id, view.rank)
                if key not in self._error_counters:
                    metric = BY_KEY["exporter_errors"]
                    self._error_counters[key] = self.files.value(
                        "counter", metric.name, metric.name + "_total", LABELS, (view.run_id, str(view.rank)),
                        metric.help)
                self._error_counters[key].inc()
            key = (site, type(error).__name__)
            if key not in self._errors_seen:
                self._errors_seen.add(key)
                log.warning("monitor: %s failed (%s: %s); counted in nanogpt_exporter_errors_total", site,
                            type(error).__name__, error)
        except Exception:
            pass


class _RunInfoCollector:
    """nanogpt_run_info per rank, from the journals' "info" events."""

    def __init__(self, node: NodeMonitor):
        self.node = node

    def collect(self) -> Iterator[Metric]:
        metric = BY_KEY["run_info"]
        family = InfoMetricFamily(metric.name, metric.help, labels=LABELS)
        for view in list(self.node.views.values()):
            info = {key: view.info.get(key, "") for key in INFO_KEYS}
            family.add_metric([view.run_id, str(view.rank)], info)
        yield family


class _TrainerProcesses:
    """prometheus-client's process figures of each live trainer, read from its /proc, labelled by run and rank."""

    def __init__(self, node: NodeMonitor):
        self.node = node
        self._collectors: dict[int, ProcessCollector] = {}

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for view in list(self.node.views.values()):
            if view.pid is None:  # a process that is gone yields nothing: its /proc is gone too
                continue
            collector = self._collectors.get(view.pid)
            if collector is None:
                collector = self._collectors[view.pid] = ProcessCollector(pid=lambda pid=view.pid: pid,
                                                                          registry=None)
            for family in collector.collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    labels = {"run_id": view.run_id, "rank": str(view.rank), **sample.labels}
                    merged.add_sample(sample.name, labels, sample.value)
        yield from families.values()
