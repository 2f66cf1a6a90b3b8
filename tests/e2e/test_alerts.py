"""Alerts end to end: the real trainer, Prometheus and Alertmanager, and a webhook
that the test serves, all on 127.0.0.1.

Prometheus runs a test-sized copy of prometheus/rules/ (every duration divided
by 60: 10m windows become 10s, the 20m warm-up 20s, `for: 10m` 10s), and
Alertmanager runs prometheus/alertmanager.yml with its `default` receiver
pointed at the webhook and its waits cut to a second.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.support.procs import REPO, Alertmanager, Prometheus, Trainer, wait_until
from tests.support.rules import plateau_parameters, write_scaled_rules

SCALE = 60  # real durations / test durations
RUN = ["--max_iters=1000000", "--log_interval=1", "--eval_interval=1000000"]  # runs until stopped


class Webhook:
    """An Alertmanager webhook receiver that keeps every alert it is sent, with its arrival time."""

    def __init__(self):
        self.received: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook._lock:
                    webhook.received += [(time.time(), alert) for alert in body["alerts"]]
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self, alertname: str) -> list[tuple[float, dict]]:
        with self._lock:
            return [(t, a) for t, a in self.received
                    if a["status"] == "firing" and a["labels"]["alertname"] == alertname]  # fmt: skip

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def alertmanager_config(webhook_url: str) -> str:
    """prometheus/alertmanager.yml with the default receiver sending to `webhook_url`, waits cut to 1s."""
    config = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())
    config["receivers"] = [{"name": "default", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}]
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s")
    return yaml.safe_dump(config)


@pytest.fixture
def stack(tmp_path):
    """start(trainer args...) -> (trainer, webhook): a trainer scraped by Prometheus, alerting via Alertmanager."""
    started = []
    webhook = Webhook()

    def start(*trainer_args: str):
        trainer = Trainer(tmp_path / "trainer", *trainer_args)
        started.append(trainer)
        alertmanager = Alertmanager(tmp_path / "alertmanager", alertmanager_config(webhook.url))
        started.append(alertmanager)
        rule_files = write_scaled_rules(tmp_path / "rules", SCALE)
        started.append(Prometheus(tmp_path / "prometheus", [trainer.target], rule_files=rule_files,
                                  alertmanager=alertmanager.address))  # fmt: skip
        return trainer, webhook

    yield start
    for process in reversed(started):
        process.stop()
    webhook.close()


def delivered(webhook: Webhook, alertname: str, run_id: str, timeout: float) -> tuple[float, dict]:
    """The first firing `alertname` of `run_id` at the webhook, as (arrival time, alert)."""
    def firing():
        return [(t, a) for t, a in webhook.firing(alertname) if a["labels"]["run_id"] == run_id]
    return wait_until(firing, timeout=timeout, what=f"{alertname} of {run_id} at the webhook")[0]


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
