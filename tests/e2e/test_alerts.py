"""Alerts end to end: the real trainer, Prometheus and Alertmanager, and a webhook
that the test serves, all on 127.0.0.1.

Prometheus runs a test-sized copy of prometheus/rules/ (every duration divided
by 60: 10m windows become 10s, the 20m warm-up 20s, `for: 10m` 10s), and
Alertmanager runs prometheus/alertmanager.yml with its `default` receiver
pointed at the webhook and its waits cut to a second (the `stack` fixture:
tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.alerting import SCALE, delivered
from tests.support.procs import http_json, wait_until
from tests.support.rules import plateau_parameters

RUN = ["--max_iters=1000000", "--log_interval=1", "--eval_interval=1000000"]  # runs until stopped


@pytest.mark.slow
def test_a_plateauing_loss_delivers_loss_plateau_to_the_webhook(stack):
    started_at = time.time()
    _, webhook = stack("--lr_zero_after=1", "--run-id=e2e-plateau", *RUN)
    received_at, alert = delivered(webhook, "NanoGPTLossPlateau", "e2e-plateau", timeout=150)
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == "Run e2e-plateau (rank 0): training loss has plateaued"
    # Not before the (scaled) warm-up and `for:` have passed since the run started.
    params = plateau_parameters()
    assert received_at - started_at >= (params.warmup_seconds + params.for_seconds) / SCALE


@pytest.mark.slow
def test_a_nan_loss_delivers_loss_not_finite_to_the_webhook(stack):
    trainer, webhook = stack("--inject_nonfinite_at=10", "--run-id=e2e-nan", *RUN)
    _, alert = delivered(webhook, "NanoGPTLossNotFinite", "e2e-nan", timeout=90)
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "Run e2e-nan (rank 0): training loss is NaN or infinite"
    assert trainer.find(r"iter \d+: loss nan")


@pytest.mark.slow
def test_a_hung_trainer_keeps_being_reported_and_delivers_training_stalled(stack):
    trainer, webhook = stack("--run-id=e2e-hang", *RUN)
    wait_until(lambda: http_json(trainer.base_url + "/api/status")["iteration"] >= 5, timeout=60,
               what="a few iterations (a mean step time) first")
    os.kill(trainer.proc.pid, signal.SIGSTOP)  # a hang: the process lives, no iteration completes
    try:
        _, alert = delivered(webhook, "NanoGPTTrainingStalled", "e2e-hang", timeout=120)
        assert alert["labels"]["severity"] == "critical"
        # the monitor process still answers for the hung run, which is still running
        assert http_json(trainer.base_url + "/api/status")["state"] == "running"
    finally:
        os.kill(trainer.proc.pid, signal.SIGCONT)
