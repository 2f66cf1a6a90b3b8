"""exporter.spikes: a logged loss or grad norm far above its recent past is a spike; warm-up, a
learning-rate restart and an ordinary noisy curve are not."""

from __future__ import annotations

import math
import random

import pytest

from exporter import TrainingMonitor
from exporter.spikes import SIGMAS, WARMUP, WINDOW, SpikeDetector, SpikeWatch
from tests.support.recorded import read_back


def lr_at(i: int, warmup: int = 10, total: int = 1000) -> float:
    """nanoGPT's schedule at log point i: linear warm-up, cosine decay to a tenth."""
    if i < warmup:
        return 1e-3 * (i + 1) / (warmup + 1)
    return 1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / (total - warmup))))


def curve(n: int = 1000, seed: int = 1) -> tuple[list[float], list[float]]:
    """A nanoGPT-like run's logged loss (4.2 falling to 1.5, 2 % noise) and grad norm (falling, skewed noise)."""
    rng = random.Random(seed)
    loss = [(1.5 + 2.7 * math.exp(-i / 80)) * (1 + rng.gauss(0, 0.02)) for i in range(n)]
    grad = [(0.5 + 2 * math.exp(-i / 50)) * (1 + abs(rng.gauss(0, 0.15))) for i in range(n)]
    return loss, grad


def spikes_of(loss, grad, lr) -> list[tuple[str, int]]:
    watch, found = SpikeWatch(), []
    for i, values in enumerate(zip(loss, grad, lr)):
        loss_spike, grad_spike = watch.observe(i, *values)
        found += [("loss", i)] * bool(loss_spike) + [("grad_norm", i)] * bool(grad_spike)
    return found


def test_the_defaults_are_olmo_cores():
    assert (WINDOW, SIGMAS) == (128, 6.0) and WARMUP < WINDOW


@pytest.mark.parametrize("seed", range(5))
def test_an_ordinary_noisy_run_has_no_spike(seed):
    loss, grad = curve(seed=seed)
    assert spikes_of(loss, grad, [lr_at(i) for i in range(1000)]) == []


def test_a_loss_that_doubles_is_a_spike_and_its_grad_norm_warned_first():
    loss, grad = curve()
    loss = [v * (1.6 if 700 <= i < 703 else 1) for i, v in enumerate(loss)]
    grad = [v * (5 if 698 <= i < 700 else 1) for i, v in enumerate(grad)]
    found = spikes_of(loss, grad, [lr_at(i) for i in range(1000)])
    assert found[0] == ("grad_norm", 698) and ("loss", 700) in found
    assert all(700 <= i < 703 for kind, i in found if kind == "loss")


def test_a_warm_restart_of_the_learning_rate_is_no_spike():
    loss, grad = curve()
    lr = [lr_at(i) if i < 500 else lr_at(i - 500, 0, 500) for i in range(1000)]  # SGDR: back to the peak at 500
    loss = [v * (1.3 if 500 <= i < 520 else 1) for i, v in enumerate(loss)]  # the loss jumps with it
    grad = [v * (3 if 500 <= i < 505 else 1) for i, v in enumerate(grad)]
    assert spikes_of(loss, grad, lr) == []


def test_the_same_jump_without_a_learning_rate_restart_is_a_spike():
    loss, grad = curve()
    loss = [v * (1.3 if 500 <= i < 520 else 1) for i, v in enumerate(loss)]
    assert ("loss", 500) in spikes_of(loss, grad, [lr_at(i) for i in range(1000)])


def test_nothing_is_judged_during_warm_up():
    def after(normal_values: int):
        detector = SpikeDetector(window=128, sigmas=6, warmup=32)
        assert all(detector.observe(i, 1.0 + 0.001 * (i % 2)) is None for i in range(normal_values))
        return detector.observe(normal_values, 100.0)

    assert after(31) is None  # 31 values before it: still warming up
    assert after(32) is not None


def test_a_lasting_new_level_becomes_normal_within_a_window():
    detector = SpikeDetector(window=64, sigmas=6, warmup=16)
    rng = random.Random(0)
    flagged = [detector.observe(i, (1.0 if i < 100 else 3.0) + rng.gauss(0, 0.01)) is not None for i in range(400)]
    assert flagged[100] and not any(flagged[100 + 64:])


def test_a_fall_and_non_finite_values_are_no_spikes():
    detector = SpikeDetector(window=16, sigmas=6, warmup=4)
    for i in range(10):
        detector.observe(i, 2.0 + 0.01 * (i % 3))
    assert detector.observe(10, 0.1) is None
    assert detector.observe(11, math.nan) is None and detector.observe(12, None) is None


def test_a_spike_says_where_it_was_and_how_far_out(tmp_path):
    detector = SpikeDetector(window=16, sigmas=6, warmup=4)
    for i in range(16):
        detector.observe(i, 2.0 + (0.1 if i % 2 else -0.1))
    spike = detector.observe(16, 4.0)
    assert spike.iteration == 16 and spike.value == 4.0 and spike.mean == pytest.approx(2.0)
    assert spike.sigmas == pytest.approx(2.0 / math.sqrt(16 * 0.01 / 15))


def test_bad_settings_are_refused_with_what_was_asked():
    with pytest.raises(ValueError, match="window=1"):
        SpikeDetector(window=1, warmup=2)


def test_the_monitor_counts_spikes_and_its_status_names_the_last(tmp_path):
    monitor = TrainingMonitor(run_id="spiky", rank=0, directory=tmp_path / "run", spike_window=16, spike_sigmas=6)
    try:
        monitor.run_started(max_iterations=1000)
        for i in range(40):
            monitor.log(iteration=i * 10, loss=2.0 + (0.01 if i % 2 else -0.01), lr=1e-3, grad_norm=1.0 + 0.01 * (i % 2))
        monitor.log(iteration=400, loss=5.0, lr=1e-3, grad_norm=9.0)
        recorded = read_back(monitor)
        assert recorded.value("nanogpt_loss_spikes_total", run_id="spiky", rank="0") == 1
        assert recorded.value("nanogpt_grad_norm_spikes_total", run_id="spiky", rank="0") == 1
        status = recorded.view(0).status()
        assert status["last_loss_spike"]["iteration"] == 400 and status["last_loss_spike"]["value"] == 5.0
        assert status["last_grad_norm_spike"]["iteration"] == 400
    finally:
        monitor.close()


def test_before_any_spike_the_counters_are_zero_and_the_status_says_none(tmp_path):
    monitor = TrainingMonitor(run_id="calm", rank=0, directory=tmp_path / "run")
    try:
        monitor.run_started(max_iterations=10)
        recorded = read_back(monitor)
        assert recorded.value("nanogpt_loss_spikes_total", run_id="calm", rank="0") == 0
        assert recorded.view(0).status()["last_loss_spike"] is None
    finally:
        monitor.close()
