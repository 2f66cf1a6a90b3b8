"""The alert stack the end-to-end alert tests share: the real trainer (with the fault options of
tests.support.faulty_train), Prometheus on a test-sized copy of the rules, Alertmanager, a webhook."""

from __future__ import annotations

import sys

import pytest

from tests.support.alerting import SCALE, Webhook, alertmanager_config
from tests.support.procs import FAULTY_TRAINER, Alertmanager, Prometheus, Trainer
from tests.support.rules import write_scaled_rules


@pytest.fixture
def stack(tmp_path):
    """start(trainer args..., ranks=1) -> (trainer, webhook): a trainer scraped by Prometheus,
    alerting via Alertmanager. With ranks > 1 it runs under torchrun (CPU, gloo), one monitor
    serving every rank on one port."""
    started = []
    webhook = Webhook()

    def start(*trainer_args: str, ranks: int = 1):
        command = FAULTY_TRAINER
        if ranks > 1:  # local rank 0 starts the node's monitor and prints its URL, as alone
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                       *FAULTY_TRAINER[1:]]
        trainer = Trainer(tmp_path / "trainer", *trainer_args, command=command)
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
