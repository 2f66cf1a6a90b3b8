"""Where a rank's wall clock goes: exporter.phases splits it, TrainingMonitor counts it in
nanogpt_time_seconds_total{phase}, read back as the monitor process reads it."""

import os
import time

import pytest

from exporter import TrainingMonitor
from exporter.catalogue import PHASES
from exporter.phases import WallClock, process_start_time, redone_seconds
from exporter.point import Point
from tests.support.recorded import read_back

LABELS = {"run_id": "r1", "rank": "0"}


def phases(monitor) -> dict[str, float]:
    recorded = read_back(monitor)
    return {phase: recorded.value("nanogpt_time_seconds_total", **LABELS, phase=phase) for phase in PHASES}


@pytest.fixture
def monitor(tmp_path):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run", startup_since=1000.0)
    monitor.run_started(max_iterations=100)
    yield monitor
    monitor.close()


def test_every_phase_is_served_at_zero_from_the_first_scrape(tmp_path):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run")
    assert phases(monitor) == dict.fromkeys(PHASES, 0.0)


def test_the_first_iteration_ends_the_startup_from_the_process_start(monitor):
    monitor.iteration(0, 64, timestamp=1012.5)
    assert phases(monitor)["startup"] == 12.5
    assert phases(monitor)["step"] == 0.0


def test_the_time_between_iterations_is_step_less_the_reported_data_wait(monitor):
    monitor.iteration(0, 64, timestamp=1010.0)
    monitor.iteration(1, 64, timestamp=1011.0, data_seconds=0.25)
    monitor.iteration(2, 64, timestamp=1012.0, data_seconds=0.25)
    counted = phases(monitor)
    assert (counted["step"], counted["data_wait"]) == (1.5, 0.5)


def test_evals_and_saves_count_in_their_phase_and_not_in_the_step_around_them(monitor):
    monitor.iteration(0, 64, timestamp=1010.0)
    monitor.evaluated(1, train_loss=2.0, val_loss=2.1, eval_seconds=3.0)
    monitor.sample(1, "text", seconds=0.5)
    monitor.checkpoint_saved(1, "ckpt.pt", seconds=1.5)
    monitor.iteration(1, 64, timestamp=1016.0)
    counted = phases(monitor)
    assert (counted["eval"], counted["checkpoint"], counted["step"]) == (3.5, 1.5, 1.0)


def test_an_eval_before_the_first_iteration_is_not_startup(monitor):
    monitor.evaluated(0, train_loss=4.0, val_loss=4.1, eval_seconds=2.0)
    monitor.iteration(0, 64, timestamp=1010.0)
    assert (phases(monitor)["startup"], phases(monitor)["eval"]) == (8.0, 2.0)


def test_the_phases_add_up_to_the_wall_clock_from_the_process_start(monitor):
    monitor.iteration(0, 64, timestamp=1010.0)
    monitor.evaluated(1, val_loss=2.0, eval_seconds=2.0)
    for i, t in enumerate((1013.0, 1014.0, 1015.0), start=1):
        monitor.iteration(i, 64, timestamp=t, data_seconds=0.1)
    assert sum(phases(monitor).values()) == pytest.approx(1015.0 - 1000.0)


def test_a_data_wait_longer_than_the_stretch_is_held_to_it():
    clock = WallClock(since=0.0)
    clock.iteration(1.0)
    assert clock.iteration(2.0, data_seconds=5.0) == (0.0, 1.0, 0.0)


def test_a_clock_step_backwards_counts_nothing_negative():
    clock = WallClock(since=0.0)
    clock.iteration(10.0)
    assert clock.iteration(9.0) == (0.0, 0.0, 0.0)
    assert clock.iteration(11.0) == (0.0, 0.0, 1.0)  # from the latest time seen, not the earlier one


def test_a_resume_counts_the_redone_iterations_as_lost(tmp_path):
    log = tmp_path / "metrics.jsonl"
    first = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "a", metrics_log=log)
    first.run_started(max_iterations=100)
    for i, t in ((0, 100.0), (10, 110.0), (20, 120.0), (30, 130.0)):
        first.log(i, loss=3.0, step_seconds=1.0, timestamp=t)
    first.close()
    resumed = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "b", metrics_log=log)
    resumed.run_started(max_iterations=100, start_iteration=10)  # the checkpoint was saved at 10
    # iterations 10..30 are redone: 120 s from 10's point to 30's, and 10's own step
    assert phases(resumed)["lost"] == pytest.approx(20.0 + 1.0)
    resumed.close()


def test_a_resume_with_nothing_logged_after_the_checkpoint_lost_nothing():
    assert redone_seconds([]) == 0.0
    assert redone_seconds([Point(5, 3.0, timestamp=None)]) == 0.0


def test_the_allreduce_wait_is_counted_where_the_loop_measures_it(monitor):
    monitor.iteration(0, 64, timestamp=1010.0, sync_seconds=0.5)
    monitor.iteration(1, 64, timestamp=1011.0, sync_seconds=0.25)
    assert read_back(monitor).value("nanogpt_allreduce_wait_seconds_total", **LABELS) == 0.75


def test_the_process_start_time_is_this_process_s():
    started = process_start_time()
    assert started is not None and started <= time.time()
    assert process_start_time(os.getpid()) == started


def test_a_monitor_counts_its_startup_from_the_process_start_by_default(tmp_path):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run")
    monitor.run_started(max_iterations=10)
    now = time.time()
    monitor.iteration(0, 64, timestamp=now)
    assert phases(monitor)["startup"] == pytest.approx(now - process_start_time(), abs=0.05)
    monitor.close()


def test_the_status_carries_each_phase_s_seconds_and_the_goodput_they_make(monitor):
    monitor.iteration(0, 64, timestamp=1020.0)  # 20 s of startup
    for i in range(1, 101):
        monitor.iteration(i, 64, timestamp=1020.0 + i, data_seconds=0.25)  # not logged: read per step
    status = read_back(monitor).view(0).status()
    assert status["time_seconds"] == phases(monitor) == {**dict.fromkeys(PHASES, 0.0), "startup": 20.0,
                                                         "step": 75.0, "data_wait": 25.0}
    assert status["goodput"] == 75.0 / 120.0  # nanogpt:goodput_ratio:run, for this rank


def test_before_the_first_iteration_nothing_is_counted_and_the_goodput_is_unknown(monitor):
    status = read_back(monitor).view(0).status()
    assert status["time_seconds"] == dict.fromkeys(PHASES, 0.0)
    assert status["goodput"] is None
