"""Samples of what the model writes: bounded where they enter, kept in the metrics log, replayed by
the monitor, served newest first by /api/samples and shown (escaped) on the page."""

from __future__ import annotations

import json

import pytest

from exporter import MetricsLog, Point, TrainingMonitor
from exporter.page import render
from exporter.samples import MAX_CHARS, MAX_KEPT, MAX_PROMPT_CHARS, Sample, Samples
from tests.support.recorded import read_back


@pytest.fixture
def monitor(tmp_path):
    monitor = TrainingMonitor(run_id="samples", rank=0, directory=tmp_path / "run",
                              metrics_log=tmp_path / "out" / "metrics.jsonl")
    monitor.run_started(max_iterations=1000)
    yield monitor
    monitor.close()


def test_a_sample_longer_than_the_bound_is_cut_with_an_ellipsis():
    sample = Sample.bounded(10, "x" * (MAX_CHARS + 50), "p" * 1000)
    assert len(sample.text) == MAX_CHARS and sample.text.endswith("\u2026")
    assert len(sample.prompt) == MAX_PROMPT_CHARS


def test_non_finite_or_non_numeric_times_are_dropped_not_kept():
    sample = Sample.bounded(1, "a", timestamp=float("nan"), seconds="slow")
    assert (sample.timestamp, sample.seconds) == (None, None)


def test_pages_run_newest_first_and_say_whether_older_ones_remain():
    samples = Samples()
    for iteration in (0, 250, 500, 750):
        samples.add(Sample(iteration, f"at {iteration}"))
    found, more = samples.page(2)
    assert [s.iteration for s in found] == [750, 500] and more
    found, more = samples.page(2, before=500)
    assert [s.iteration for s in found] == [250, 0] and not more


def test_a_resumed_run_replaces_the_samples_of_the_iterations_it_reruns():
    samples = Samples()
    for iteration in (0, 250, 500):
        samples.add(Sample(iteration, "first try"))
    samples.add(Sample(250, "second try"))
    assert [(s.iteration, s.text) for s in samples.page(10)[0]] == [(250, "second try"), (0, "first try")]


def test_memory_keeps_the_newest_samples_only():
    samples = Samples()
    for iteration in range(MAX_KEPT + 5):
        samples.add(Sample(iteration, "s"))
    assert len(samples) == MAX_KEPT and samples.page(1)[0][0].iteration == MAX_KEPT + 4


def test_sample_lines_in_the_metrics_log_are_not_points(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(Point(250, 2.5, timestamp=1.0))
    log.append_sample(Sample(250, "ROMEO:\nO", "\n", 2.0, 0.3))
    log.append(Point(260, 2.4, timestamp=3.0))
    assert [(p.iteration, p.loss) for p in log.read()] == [(250, 2.5), (260, 2.4)]
    assert list(log.samples()) == [Sample(250, "ROMEO:\nO", "\n", 2.0, 0.3)]
    log.close()


def test_a_resume_keeps_the_samples_up_to_its_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for iteration in (250, 500):
        log.append(Point(iteration, 2.0))
        log.append_sample(Sample(iteration, f"at {iteration}"))
    log.rewrite(250)
    assert [s.iteration for s in log.samples()] == [250] and [p.iteration for p in log.read()] == [250]
    log.close()


def test_a_rewritten_log_keeps_each_sample_after_the_point_of_its_iteration(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for iteration in (0, 10, 20, 30):
        log.append(Point(iteration, 2.0))
        log.append_sample(Sample(iteration, f"at {iteration}"))
    log.rewrite(20)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["iteration"], "sample" in line) for line in lines] == [
        (0, False), (0, True), (10, False), (10, True), (20, False), (20, True)]
    log.close()


def test_a_recorded_sample_is_in_the_metrics_log_and_the_monitors_view(monitor, tmp_path):
    monitor.sample(250, "First Citizen:\nBefore we proceed", prompt="\n", seconds=0.4)
    line = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["sample"] == "First Citizen:\nBefore we proceed" and line["iteration"] == 250
    view = read_back(monitor).view(0)
    assert view.samples.newest().text == "First Citizen:\nBefore we proceed"
    assert view.status()["last_sample_iteration"] == 250


def test_a_status_before_any_sample_says_none():
    monitor = TrainingMonitor(run_id="none", rank=0)
    try:
        monitor.run_started(max_iterations=10)
        assert read_back(monitor).view(0).status()["last_sample_iteration"] is None
    finally:
        monitor.close()


def test_the_monitor_replays_a_resumed_runs_samples_from_the_metrics_log(tmp_path):
    log_path = tmp_path / "out" / "metrics.jsonl"
    first = TrainingMonitor(run_id="resume", rank=0, directory=tmp_path / "a", metrics_log=log_path)
    first.run_started(max_iterations=1000)
    for iteration in (250, 500):
        first.log(iteration=iteration, loss=2.0)
        first.sample(iteration, f"at {iteration}")
    first.close()
    resumed = TrainingMonitor(run_id="resume", rank=0, directory=tmp_path / "b", metrics_log=log_path)
    try:
        resumed.run_started(max_iterations=1000, start_iteration=251)  # the checkpoint at 250
        assert [s.iteration for s in read_back(resumed).view(0).samples.page(10)[0]] == [250]
    finally:
        resumed.close()


def test_the_page_shows_the_newest_sample_open_and_older_ones_folded(monitor):
    for iteration in (0, 250, 500):
        monitor.sample(iteration, f"text at {iteration}")
    html = render(read_back(monitor).view(0))[0].decode()
    start = html.index('data-testid="samples"')
    section = html[start:html.index("</section>", start)]
    assert 'data-last="500"' in section
    assert section.index("text at 500") < section.index("<details") < section.index("text at 250")
    assert "2 older" in section


def test_sample_text_is_escaped_on_the_page(monitor):
    monitor.sample(10, "<script>alert(1)</script>", prompt='"><img src=x>')
    html = render(read_back(monitor).view(0))[0].decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x>" not in html


def test_a_page_without_samples_says_when_they_come(tmp_path):
    monitor = TrainingMonitor(run_id="none", rank=0, directory=tmp_path / "run")
    try:
        monitor.run_started(max_iterations=10)
        assert "The model writes a sample at each evaluation" in render(read_back(monitor).view(0))[0].decode()
    finally:
        monitor.close()
