"""Alert delivery for end-to-end tests: a webhook receiver the test serves, the project's
Alertmanager config pointed at it, and a wait for an alert to arrive."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

from tests.support.procs import REPO, wait_until

SCALE = 60  # real rule durations / test durations (10m windows become 10s)

class Webhook:
    """An Alertmanager webhook receiver that keeps every alert it is sent, with its arrival time."""

    def __init__(self):
        self.received: list[tuple[float, dict]] = []
        self.notifications: list[tuple[float, dict]] = []  # one per POST: what a person would be sent
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook._lock:
                    webhook.received += [(time.time(), alert) for alert in body["alerts"]]
                    webhook.notifications.append((time.time(), body))
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


def alertmanager_config(webhook_url: str, group_wait: str = "1s", group_interval: str = "1s") -> str:
    """prometheus/alertmanager.yml with the default receiver sending to `webhook_url`, waits cut to 1s."""
    config = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())
    config["receivers"] = [{"name": "default", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}]
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait=group_wait, group_interval=group_interval)
    return yaml.safe_dump(config)


def delivered(webhook: Webhook, alertname: str, run_id: str, timeout: float) -> tuple[float, dict]:
    """The first firing `alertname` of `run_id` at the webhook, as (arrival time, alert)."""
    def firing():
        return [(t, a) for t, a in webhook.firing(alertname) if a["labels"]["run_id"] == run_id]
    return wait_until(firing, timeout=timeout, what=f"{alertname} of {run_id} at the webhook")[0]
