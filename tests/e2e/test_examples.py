"""The runnable examples (plain PyTorch, Hugging Face Trainer, Lightning) feed the same stack.

Each example trains for real (tiny model, CPU) with `--lr-zero-after`, so its loss
stops improving early. Two real Prometheus servers scrape it every second: one
loads the project's rules as they ship (and a test alert that always fires), and
every panel query of both dashboards must return data for the example's run_id;
the other loads the rules scaled down 60x (tests/support/rules.py), in which
NanoGPTLossPlateau must fire for that run. Under torchrun, each rank of the
Hugging Face example serves its own metrics, as our trainer's ranks do.
"""

from __future__ import annotations

import re
import sys
import time

import pytest
import yaml

from tests.support.alerting import SCALE
from tests.support.examples import EXAMPLES, Example
from tests.support.grafana import ALWAYS_FIRING, PANEL_DATA_READY, is_gpu_query, is_ranks_query, queries_without_data
from tests.support.procs import PROMETHEUS_RULES, Prometheus, free_port, http_get, wait_until
from tests.support.rules import write_scaled_rules

pytestmark = pytest.mark.slow

SCRAPE_SECONDS = 1
# Long enough to stay running while the queries run; stopped at the end. Logged every step so
# the scaled plateau windows (10 s) hold enough points; evals and saves every 10 steps.
RUN = ["--max-steps=100000", "--log-every=1", "--eval-every=10", "--save-every=10", "--lr-zero-after=20"]


@pytest.fixture(scope="module", params=EXAMPLES)
def watched(request, tmp_path_factory):
    """(run_id, example, prometheus with the shipped rules, prometheus with scaled rules, start time)."""
    name = request.param
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "always-firing.yml").write_text(yaml.safe_dump(ALWAYS_FIRING))
    port, run_id, started = free_port(), f"example-{name.replace('_', '-')}", []
    try:
        shipped = Prometheus(workdir / "prometheus", [f"127.0.0.1:{port}"], scrape_interval=f"{SCRAPE_SECONDS}s",
                             rule_files=[*sorted(PROMETHEUS_RULES.glob("*.yml")), workdir / "always-firing.yml"])
        started.append(shipped)
        scaled = Prometheus(workdir / "prometheus-scaled", [f"127.0.0.1:{port}"],
                            rule_files=write_scaled_rules(workdir / "rules", SCALE))
        started.append(scaled)
        start = time.time()
        example = Example(workdir, name, f"--metrics-port={port}", f"--run-id={run_id}", *RUN)
        started.append(example)
        yield run_id, example, shipped, scaled, start
    finally:
        for process in reversed(started):
            process.stop()


def test_every_dashboard_query_returns_data_for_the_example_s_run(watched):
    run_id, example, prometheus, _, start = watched
    for expr in PANEL_DATA_READY:
        wait_until(lambda: prometheus.query(expr), timeout=120, interval=0.5, what=f"Prometheus to return {expr}")
    assert example.running()
    # one process: no GPU series, no ranks to compare (tests/e2e/test_grafana_queries.py runs those)
    failures = queries_without_data(prometheus, run_id, start, time.time(), SCRAPE_SECONDS,
                                    select=lambda expr: not is_gpu_query(expr) and not is_ranks_query(expr))
    assert not failures, "\n".join(failures)


def test_a_zeroed_learning_rate_fires_the_loss_plateau_alert(watched):
    run_id, example, _, scaled, _ = watched
    firing = f'ALERTS{{alertname="NanoGPTLossPlateau", alertstate="firing", run_id="{run_id}"}}'
    wait_until(lambda: scaled.query(firing), timeout=150, interval=1, what=f"NanoGPTLossPlateau for {run_id}")
    assert example.running()


def test_under_torchrun_one_monitor_serves_both_ranks_of_a_trainer_run_on_one_port(tmp_path):
    port = free_port()
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    example = Example(tmp_path, "hf_trainer", f"--metrics-port={port}", "--max-steps=6", "--log-every=2",
                      "--eval-every=3", "--save-every=3", "--metrics-linger=120", launcher=torchrun,
                      wait_for_metrics=False)
    try:
        wait_until(lambda: "serving metrics for" in example.output() or not example.running(),
                   timeout=240, what="local rank 0 to finish training and linger")
        assert example.running(), example.output()[-3000:]
        assert example.output().count("metrics: http") == 1  # only local rank 0 starts a monitor

        def both_ranks_done():
            text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
            found = set(re.findall(r'nanogpt_iterations_total\{rank="(\d)",run_id="([^"]+)"\} 6\.0', text))
            return found if len(found) == 2 else None

        found = wait_until(both_ranks_done, timeout=60, what="both ranks' 6 iterations on the one port")
        (_, run_id), _ = sorted(found)
        assert found == {("0", run_id), ("1", run_id)}  # one run_id, chosen by rank 0, on both ranks
    finally:
        example.stop()
