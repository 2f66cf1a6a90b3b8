"""The dashboards' GPU panels on GPU data, without a GPU.

A real Prometheus is backfilled (`promtool tsdb create-blocks-from openmetrics`)
with 30 minutes of GPU-shaped series: the trainer's own device metrics for a
two-rank run (every catalogue GPU family, with the labels the collector gives
them) and NVIDIA DCGM exporter's fields for the same two devices (joined by
UUID). Every panel query that reads device series, variables substituted as
Grafana would, must return data.
"""

from __future__ import annotations

import math
import subprocess
import time

import pytest

from exporter import catalogue
from nanogpt_monitor.gpu import THROTTLE_BITS
from tests.support.grafana import generator_module, is_gpu_query, load_dashboards, queries_without_data, targets
from tests.support.procs import Prometheus, require

pytestmark = pytest.mark.slow

RUN_ID = "gpu-run"
SCRAPE_SECONDS = 15
MINUTES = 30
GIB = 2**30
# (rank, the trainer's gpu label, UUID, DCGM's gpu index): rank 1 sees its GPU as cuda:1
DEVICES = [(0, "0", "GPU-5b3c1f0e-8c2a-4d7e-9a61-0f2e3d4c5b6a", "0"),
           (1, "1", "GPU-0a0b0c0d-1111-2222-3333-444455556666", "1")]
NAME = "NVIDIA H200"


def labels(**pairs: str) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in pairs.items()) + "}"


def trainer_values(t: int) -> dict[str, float]:
    """One scrape's device readings at second t of the run (a busy, warm GPU with wobble)."""
    wobble = math.sin(t / 60)
    return {
        "gpu_memory_allocated": 60 * GIB + GIB * wobble, "gpu_memory_reserved": 70 * GIB,
        "gpu_memory_peak_allocated": 66 * GIB, "gpu_memory_used": 72 * GIB, "gpu_memory_total": 141 * GIB,
        "gpu_utilization": 0.9 + 0.05 * wobble, "gpu_power": 600 + 50 * wobble,
        "gpu_temperature": 65 + 3 * wobble, "gpu_sm_clock": 1.98e9,
        # counters: a retry every ten minutes, no OOM
        "gpu_allocator_retries": t // 600, "gpu_allocator_ooms": 0.0,
    }


def openmetrics(start: int) -> str:
    """The backfill: trainer and DCGM families, one sample per scrape for MINUTES minutes."""
    times = range(start, start + 60 * MINUTES + 1, SCRAPE_SECONDS)
    lines = []

    def family(name: str, series: list[tuple[str, callable]], kind: str = "gauge") -> None:
        lines.append(f"# TYPE {name} {kind}")
        sample = f"{name}_total" if kind == "counter" else name
        for label_text, value in series:
            lines.extend(f"{sample}{label_text} {value(t):g} {t}" for t in times)

    trainer = [(rank, dict(job="nanogpt", instance=f"trainer:{8000 + rank}", run_id=RUN_ID, rank=str(rank),
                           gpu=index, uuid=uuid, name=NAME)) for rank, index, uuid, _ in DEVICES]
    for metric in catalogue.GPU_METRICS:
        if metric.label == "reason":  # sw_power_cap active one scrape in four, the others off
            family(metric.name, [(labels(**base, reason=reason),
                                  lambda t, r=reason: float(r == "sw_power_cap" and t % 60 == 0))
                                 for _, base in trainer for reason in THROTTLE_BITS])
        else:
            family(metric.name, [(labels(**base), lambda t, key=metric.key: trainer_values(t)[key])
                                 for _, base in trainer], metric.kind)
    for name, value in (("nanogpt_training_start_time_seconds", lambda t: start),
                        ("nanogpt_training_state", lambda t: 1.0)):
        extra = {"state": "running"} if name == "nanogpt_training_state" else {}
        family(name, [(labels(job="nanogpt", instance=f"trainer:{8000 + rank}", run_id=RUN_ID, rank=str(rank),
                              **extra), value) for rank, *_ in DEVICES])
    dcgm = {"DCGM_FI_DEV_GPU_UTIL": lambda t: 88.0, "DCGM_FI_PROF_SM_ACTIVE": lambda t: 0.71,
            "DCGM_FI_DEV_FB_USED": lambda t: 72 * 1024.0, "DCGM_FI_DEV_POWER_USAGE": lambda t: 612.5}
    assert set(dcgm) == set(generator_module("gpu_panels").DCGM_FIELDS)
    for name, value in dcgm.items():
        family(name, [(labels(job="dcgm", instance="dcgm-exporter:9400", gpu=dcgm_gpu, UUID=uuid,
                              device=f"nvidia{dcgm_gpu}", modelName=NAME, Hostname="gpu-box"), value)
                      for _, _, uuid, dcgm_gpu in DEVICES])
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    """(prometheus, start, end) with the backfill loaded."""
    workdir = tmp_path_factory.mktemp("gpu-backfill")
    end = int(time.time()) // 60 * 60 - 600  # whole minutes, ten minutes ago: blocks, not the head
    start = end - 60 * MINUTES
    source = workdir / "gpu.om.txt"
    source.write_text(openmetrics(start))
    data = workdir / "prometheus" / "data"
    data.mkdir(parents=True)
    subprocess.run([require("promtool"), "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
                   check=True, capture_output=True, text=True, timeout=120)
    prometheus = Prometheus(workdir / "prometheus", [], scrape_interval=f"{SCRAPE_SECONDS}s")
    try:
        yield prometheus, start, start + 60 * MINUTES
    finally:
        prometheus.stop()


def test_the_dashboards_have_gpu_panels_with_trainer_and_dcgm_queries():
    gpu_exprs = [target["expr"] for board in load_dashboards().values() for _, target in targets(board)
                 if is_gpu_query(target["expr"])]
    names = " ".join(gpu_exprs)
    for name in ("nanogpt_gpu_utilization_ratio", "nanogpt_gpu_memory_reserved_bytes", *generator_module(
            "gpu_panels").DCGM_FIELDS):
        assert name in names, name
    mobile = [target["expr"] for _, target in targets(load_dashboards()["nanogpt-mobile"])]
    assert any(is_gpu_query(expr) for expr in mobile)


def test_every_gpu_panel_query_returns_data_on_the_backfilled_prometheus(backfilled):
    prometheus, start, end = backfilled
    assert prometheus.api("label/run_id/values", start=start, end=end) == [RUN_ID]
    failures = queries_without_data(prometheus, RUN_ID, start, end, SCRAPE_SECONDS, select=is_gpu_query)
    assert not failures, "\n".join(failures)


def test_dcgm_series_join_the_run_and_rank_of_the_trainer_on_the_same_gpu(backfilled):
    prometheus, _, end = backfilled
    expr = generator_module("gpu_panels").dcgm("DCGM_FI_DEV_POWER_USAGE")
    joined = prometheus.api("query", query=expr.replace("$run_id", RUN_ID).replace("$rank", ".*"), time=end)
    by_rank = {r["metric"]["rank"]: r["metric"]["UUID"] for r in joined["result"]}
    assert by_rank == {str(rank): uuid for rank, _, uuid, _ in DEVICES}
    assert {float(r["value"][1]) for r in joined["result"]} == {612.5}
