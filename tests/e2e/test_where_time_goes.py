"""Where the GPU-hours go, end to end: the real trainer with a fault injected from outside
(tests.support.faulty_train), Prometheus on the test-sized rules (durations / 60), Alertmanager and
a webhook (the `stack` fixture, tests/e2e/conftest.py): a straggler among four gloo ranks, a slow
data loader, a loss spike, and the seconds a resume redoes."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.support.alerting import delivered
from tests.support.procs import FAULTY_TRAINER, Trainer, http_get, http_json, wait_until
from tests.support.recorded import scraped_value

RUN = ["--max_iters=1000000", "--eval_interval=1000000"]  # runs until stopped


def firing_ranks(webhook, alertname: str, run_id: str) -> set[str]:
    return {a["labels"]["rank"] for _, a in webhook.firing(alertname) if a["labels"]["run_id"] == run_id}


@pytest.mark.slow
def test_one_slowed_rank_of_four_fires_straggler_rank_for_that_rank_alone(stack):
    trainer, webhook = stack("--slow_rank=2", "--slow_rank_seconds=0.05", "--run-id=e2e-straggler",
                             "--gradient_accumulation_steps=4",  # one micro-step per rank
                             "--log_interval=5", *RUN, ranks=4)
    _, alert = delivered(webhook, "NanoGPTStragglerRank", "e2e-straggler", timeout=180)
    assert (alert["labels"]["rank"], alert["labels"]["severity"]) == ("2", "warning")
    assert alert["annotations"]["summary"].startswith("Run e2e-straggler: rank 2 is a straggler")
    assert trainer.target in alert["annotations"]["description"]
    time.sleep(10)  # a scaled `for:` more: no other rank joins it
    assert firing_ranks(webhook, "NanoGPTStragglerRank", "e2e-straggler") == {"2"}


@pytest.mark.slow
def test_a_slowed_data_loader_fires_input_bound(stack):
    trainer, webhook = stack("--slow_data_seconds=0.05", "--run-id=e2e-input", "--log_interval=5", *RUN)
    _, alert = delivered(webhook, "NanoGPTInputBound", "e2e-input", timeout=120)
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"].startswith("Run e2e-input (rank 0): waiting on input")
    text = http_get(trainer.base_url + "/metrics").decode()
    waited = scraped_value(text, "nanogpt_time_seconds_total", run_id="e2e-input", rank="0", phase="data_wait")
    stepped = scraped_value(text, "nanogpt_time_seconds_total", run_id="e2e-input", rank="0", phase="step")
    assert waited > stepped  # 50 ms of sleep per batch against a tiny model's few milliseconds


@pytest.mark.slow
def test_an_lr_burst_between_log_points_fires_loss_spike(stack):
    # lr at 1000x for iteration 151 alone; logged every 2nd iteration, so the logged lr never rises
    trainer, webhook = stack("--lr_burst_at=151", "--warmup_iters=10", "--log_interval=2", "--run-id=e2e-spike",
                             *RUN)
    _, alert = delivered(webhook, "NanoGPTLossSpike", "e2e-spike", timeout=120)
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "Run e2e-spike (rank 0): the training loss spiked"
    assert http_json(trainer.base_url + "/api/status")["last_loss_spike"]["iteration"] >= 152  # logged after it


@pytest.mark.slow
def test_a_resume_after_kill_9_counts_the_redone_iterations_as_lost_seconds(tmp_path):
    started = []
    try:
        trainer = Trainer(tmp_path, "--run-id=e2e-lost", "--log_interval=1", "--eval_interval=50",
                          "--eval_iters=2", *RUN[:1], command=FAULTY_TRAINER)  # fmt: skip
        started.append(trainer)
        wait_until(lambda: trainer.find(r"^iter 8\d:"), timeout=90, what="iterations well past the save at 50")
        trainer.signal(signal.SIGKILL)
        assert trainer.wait(timeout=10) == -signal.SIGKILL
        points = [json.loads(line) for line in (trainer.out_dir / "metrics.jsonl").read_text().splitlines()
                  if line.endswith("}") and "sample" not in line]
        redone = [p for p in points if p["iteration"] >= 50]  # the checkpoint holds iteration 50, to be redone
        expected = redone[-1]["timestamp"] - redone[0]["timestamp"] + redone[0]["step_seconds"]

        resumed = Trainer(tmp_path, "--resume", "--run-id=e2e-lost", "--max_iters=1000", "--log_interval=1", "--eval_interval=50",
                          "--eval_iters=2")  # fmt: skip
        started.append(resumed)
        lost = wait_until(lambda: scraped_value(http_get(resumed.base_url + "/metrics").decode(),
                                                "nanogpt_time_seconds_total", run_id="e2e-lost", rank="0",
                                                phase="lost"), timeout=60, what="the resumed run's lost seconds")
        assert len(redone) >= 30 and expected > 0
        assert lost == pytest.approx(expected, rel=1e-6)
    finally:
        for process in reversed(started):
            process.stop()
