"""The alert rules and every dashboard query with Kubernetes-style target labels, end to end.

On a cluster the PodMonitor (deploy/k8s) adds namespace, pod and node to every series, and a
run's ranks live in several pods on several nodes, each pod's monitor serving its ranks on one
port. Here simulated runs of 4 ranks in 2 "pods" of 2 (the real exporter and monitor processes,
synthetic numbers: tests/support/fleet.py) are discovered through file_sd groups carrying those
labels, one target per pod, scraped by a real Prometheus with the project's rules scaled down
60x, and alert through a real Alertmanager with the project's routing to a webhook. Each faulty
run must send one notification per alert, holding the alerts of all its ranks.
"""

from __future__ import annotations

import time

import pytest

from tests.support.alerting import SCALE, Webhook, alertmanager_config
from tests.support.fleet import SimulatedRun
from tests.support.grafana import (
    is_gpu_query, load_dashboards, parse_label_values, queries_without_data, substitute, variable_query, variables,
)
from tests.support.procs import Alertmanager, Prometheus, wait_until
from tests.support.rules import write_scaled_rules

pytestmark = pytest.mark.slow

RANKS, RANKS_PER_POD = 4, 2
BEHAVIOURS = {"k8s-learn": "learn", "k8s-nan": "nan", "k8s-stall": "stall"}
WINDOW_SECONDS = 600 / SCALE  # the plateau window of the scaled rules
SCRAPE_INTERVAL = "250ms"
GROUP_WAIT_SECONDS = 5  # several rule evaluations (1 s): ranks whose alerts fire a cycle apart still share it


def kubernetes_groups(run: SimulatedRun) -> list[dict]:
    """One file_sd group per pod, with the labels the PodMonitor gives a pod's target: one target,
    the pod's monitor serving its ranks on one port."""
    return [{"targets": [f"127.0.0.1:{port}"],
             "labels": {"namespace": "ml", "pod": f"{run.run_id}-{pod}-q8x2z", "node": f"gpu-node-{pod}"}}
            for pod, port in enumerate(run.ports)]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(prometheus, webhook) once the faulty runs' alerts were delivered and the loss trend is recorded."""
    workdir = tmp_path_factory.mktemp("kubernetes-labels")
    webhook, started, runs = Webhook(), [], []
    try:
        runs += [SimulatedRun(run_id, RANKS, behaviour, WINDOW_SECONDS, ranks_per_node=RANKS_PER_POD)
                 for run_id, behaviour in BEHAVIOURS.items()]
        alertmanager = Alertmanager(workdir / "alertmanager", alertmanager_config(
            webhook.url, group_wait=f"{GROUP_WAIT_SECONDS}s", group_interval="1s"))
        started.append(alertmanager)
        prometheus = Prometheus(workdir / "prometheus", [], target_groups=[g for r in runs for g in kubernetes_groups(r)],
                                rule_files=write_scaled_rules(workdir / "rules", SCALE),
                                scrape_interval=SCRAPE_INTERVAL,  # several scrapes in the scaled rate1m (1s)
                                alertmanager=alertmanager.address)  # fmt: skip
        started.append(prometheus)
        for alertname, run_id in (("NanoGPTLossNotFinite", "k8s-nan"), ("NanoGPTTrainingStalled", "k8s-stall")):
            wait_until(lambda: notifications(webhook, alertname, run_id), timeout=120, interval=0.5,
                       what=f"{alertname} of {run_id} at the webhook")
        wait_until(lambda: prometheus.query('nanogpt:loss_trend{run_id="k8s-learn"}'), timeout=60,
                   what="the loss trend of the learning run")
        time.sleep(GROUP_WAIT_SECONDS)  # noqa: a late rank's alert would be sent within this (group_interval 1s)
        yield prometheus, webhook
    finally:
        for process in reversed(started):
            process.stop()
        for run in runs:
            run.close()
        webhook.close()


def notifications(webhook: Webhook, alertname: str, run_id: str) -> list[dict]:
    return [body for _, body in webhook.notifications
            if body["groupLabels"] == {"alertname": alertname, "run_id": run_id}]  # fmt: skip


@pytest.mark.parametrize("alertname,run_id", [("NanoGPTLossNotFinite", "k8s-nan"),
                                              ("NanoGPTTrainingStalled", "k8s-stall")])
def test_a_faulty_run_sends_one_notification_per_alert_with_every_rank(cluster, alertname, run_id):
    _, webhook = cluster
    (notification,) = notifications(webhook, alertname, run_id)
    alerts = notification["alerts"]
    assert sorted(a["labels"]["rank"] for a in alerts) == [str(r) for r in range(RANKS)]
    assert {(a["labels"]["rank"], a["labels"]["namespace"], a["labels"]["pod"], a["labels"]["node"])
            for a in alerts} == set(pod_labels(run_id))  # fmt: skip


def pod_labels(run_id: str) -> list[tuple[str, str, str, str]]:
    """(rank, namespace, pod, node) of every rank of a run: its pod's target labels."""
    return [(str(r), "ml", f"{run_id}-{r // RANKS_PER_POD}-q8x2z", f"gpu-node-{r // RANKS_PER_POD}")
            for r in range(RANKS)]


def test_one_target_per_pod_serves_every_rank_of_the_pod(cluster):
    prometheus, _ = cluster
    up = prometheus.query('up{job="nanogpt"} == 1')
    assert len(up) == len(BEHAVIOURS) * RANKS // RANKS_PER_POD
    for run_id in BEHAVIOURS:
        series = prometheus.query(f'nanogpt_run_info{{run_id="{run_id}"}}')
        assert sorted((s["metric"]["rank"], s["metric"]["namespace"], s["metric"]["pod"], s["metric"]["node"])
                      for s in series) == pod_labels(run_id)  # fmt: skip
        served_by = {(s["metric"]["pod"], s["metric"]["instance"]) for s in series}  # one port per pod
        pods = RANKS // RANKS_PER_POD
        assert len(served_by) == len({pod for pod, _ in served_by}) == len({i for _, i in served_by}) == pods


def test_a_healthy_run_sends_nothing(cluster):
    _, webhook = cluster
    assert not [b for _, b in webhook.notifications if b["groupLabels"].get("run_id") == "k8s-learn"]


def test_every_dashboard_query_returns_series_with_kubernetes_labels(cluster):
    # all three runs selected; the GPU panels need GPU series (tests/e2e/test_gpu_dashboards.py)
    prometheus, _ = cluster
    end = time.time()
    failures = queries_without_data(prometheus, "k8s-.*", end - 30, end, scrape_seconds=1,
                                    select=lambda expr: not is_gpu_query(expr))
    assert not failures, "\n".join(failures)


def test_variables_list_every_run_and_rank(cluster):
    prometheus, _ = cluster
    for board in load_dashboards().values():
        found = {}
        for name, variable in variables(board).items():
            selector, label = parse_label_values(variable_query(variable))
            found[name] = prometheus.api(f"label/{label}/values", **{
                "match[]": substitute(selector, ".*", 3600), "start": time.time() - 3600, "end": time.time()})
        assert found == {"run_id": sorted(BEHAVIOURS), "rank": [str(r) for r in range(RANKS)]}
