"""nanogpt_monitor.run.MonitoredRun: a process's monitor for adapters, read over the monitor process it starts."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from exporter import PortInUseError, ServeError
from exporter.journal import run_directory
from nanogpt_monitor.run import MonitoredRun
from tests.support.procs import METRICS_URL_LINE, REPO, http_get, wait_until
from tests.support.recorded import Served, read_back

LABELS = {"run_id": "run-test", "rank": "0"}


@pytest.fixture
def run():
    run = MonitoredRun(run_id="run-test", port=0)
    yield run
    run.close(linger_seconds=0)


@pytest.fixture
def recorded(tmp_path):
    """A run that records into tmp_path and starts no monitor (one is external): no socket, no process."""
    run = MonitoredRun(run_id="run-test", directory=tmp_path / "run", external=True)
    yield run
    run.close()


def value(run, metric, **labels):
    return Served(run.url).value(metric, **LABELS, **labels)


def test_start_serves_prints_the_url_and_reports_the_run(run, capsys):
    run.start(max_iterations=50)
    assert f"metrics: {run.url}/metrics" in capsys.readouterr().out
    assert b"nanogpt_max_iterations" in http_get(f"{run.url}/metrics")
    assert value(run, "nanogpt_training_state", state="running") == 1


def test_step_time_and_tokens_per_second_span_the_steps_since_the_last_log(run):
    run.start(max_iterations=50)
    for i in range(1, 5):
        run.step(i, tokens=100)
    run.log(4, loss=2.0)
    point = Served(run.url).points()[-1]
    assert point["tokens_per_second"] == pytest.approx(400 / (4 * point["step_seconds"]))
    assert value(run, "nanogpt_tokens_total") == 400


def test_the_best_val_loss_is_kept(run):
    run.start(max_iterations=50)
    for i, loss in enumerate((3.0, 2.0, 2.5)):
        run.evaluated(i, loss)
    assert Served(run.url).status()["best_val_loss"] == 2.0


def test_monitoring_errors_are_counted_not_raised(run):
    run.start(max_iterations=50)
    run.log(1, loss="not a number")
    run.step(2, tokens=-1)
    assert value(run, "nanogpt_exporter_errors_total") == 2


def test_a_port_in_use_is_an_error_before_training_and_leaves_no_records(run):
    run.start(max_iterations=50)
    other = MonitoredRun(run_id="run-taken", port=int(run.url.rsplit(":", 1)[1]))
    with pytest.raises(PortInUseError):
        other.start(max_iterations=50)
    assert not run_directory("run-taken").exists()


def test_a_process_that_exits_before_the_end_reports_failed_while_it_lingers():
    code = ("from nanogpt_monitor.run import MonitoredRun\n"
            "run = MonitoredRun(run_id='crash', port=0, linger_seconds=60)\n"
            "run.start(max_iterations=10)\n"
            "run.step(1, 10)\n"
            "raise RuntimeError('out of memory')\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        url = re.search(METRICS_URL_LINE, process.stdout.readline()).group(1)
        failed = 'nanogpt_training_state{rank="0",run_id="crash",state="failed"} 1.0'
        wait_until(lambda: failed in http_get(f"{url}/metrics").decode(), timeout=30, what="the failed state")
        assert process.poll() is None  # still serving: lingering
    finally:
        process.kill()
        process.wait()


def test_every_rank_records_and_only_local_rank_0_serves_the_node(monkeypatch, capsys):
    ranks = []
    try:
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("LOCAL_RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            ranks.append(MonitoredRun(run_id="run-ranks", port=0))
            ranks[-1].start(max_iterations=10 * (rank + 1))
        zero, one = ranks
        assert one.url is None and zero.url is not None
        assert capsys.readouterr().out.count("metrics: ") == 1  # one monitor per node, one URL
        assert one.monitor.directory == zero.monitor.directory
        served = Served(zero.url)
        assert served.value("nanogpt_max_iterations", run_id="run-ranks", rank="1") == 20
    finally:
        for run in reversed(ranks):
            run.close(linger_seconds=0)


def test_leaving_the_with_block_ends_the_run_finished_and_closes_it(tmp_path):
    with MonitoredRun(run_id="run-with", directory=tmp_path / "run", external=True) as run:
        run.start(max_iterations=3)
        run.step(1, tokens=10)
    assert read_back(run.monitor).view(0).status()["state"] == "finished"
    assert run.closed


def test_an_exception_leaving_the_with_block_ends_the_run_failed_and_goes_on_its_way(tmp_path):
    with pytest.raises(RuntimeError, match="diverged"):
        with MonitoredRun(run_id="run-with", directory=tmp_path / "run", external=True) as run:
            run.start(max_iterations=3)
            raise RuntimeError("diverged")
    status = read_back(run.monitor).view(0).status()
    assert (status["state"], status["reason"]) == ("failed", "RuntimeError: diverged")


def test_figures_the_loop_measured_itself_are_kept(recorded):
    recorded.start(max_iterations=10)
    recorded.step(1, tokens=100)
    recorded.log(1, loss=2.0, step_seconds=0.25, tokens_per_second=400.0, mfu=0.5)
    point = read_back(recorded.monitor).view(0).history.last()
    assert (point.step_seconds, point.tokens_per_second, point.mfu) == (0.25, 400.0, 0.5)


def test_with_an_external_monitor_this_rank_records_and_serves_nothing(recorded, capsys):
    recorded.start(max_iterations=10)
    assert recorded.url is None and "metrics:" not in capsys.readouterr().out
    assert read_back(recorded.monitor).view(0).status()["state"] == "running"


def test_rank_r_logs_its_points_beside_rank_0s_log(tmp_path, monkeypatch):
    for name, value_ in (("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value_)
    run = MonitoredRun(run_id="run-ranks", directory=tmp_path / "run", metrics_log=tmp_path / "metrics.jsonl")
    run.start(max_iterations=2)
    run.log(1, loss=1.0)
    run.close()
    assert (tmp_path / "metrics.rank1.jsonl").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_the_rank_that_serves_lingers_through_the_given_wait_and_says_so(run, capsys):
    run.start(max_iterations=1)
    url, waited = run.url, []
    run.close(linger_seconds=math.inf, wait=waited.append)
    assert waited == [math.inf]
    assert f"run finished; page stays at {url}/ until Ctrl-C" in capsys.readouterr().out


def test_a_rank_that_serves_nothing_does_not_linger(recorded):
    recorded.start(max_iterations=1)
    waited = []
    recorded.close(linger_seconds=5, wait=waited.append)
    assert waited == [] and recorded.closed


def test_a_bad_web_config_is_a_serve_error_before_anything_is_recorded(tmp_path):
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users: [not, a, mapping]\n")
    run = MonitoredRun(run_id="run-bad-web", port=0, web_config=web_config)
    with pytest.raises(ServeError, match="web.yml"):
        run.start(max_iterations=1)
    assert run.monitor is None and not run_directory("run-bad-web").exists()
