"""examples/plain_pytorch.py times its DataLoader's next() and hands it over as data_seconds: run
in this process over windows whose every read sleeps, its monitor serves those seconds as
data_wait, the evaluation's reads as eval, and phases that add up to the wall clock."""

from __future__ import annotations

import importlib
import sys
import time

import pytest

pytest.importorskip("torch")

from exporter.catalogue import PHASES  # noqa: E402
from exporter.phases import process_start_time  # noqa: E402
from nanogpt_monitor import MonitoredRun  # noqa: E402
from tests.support.procs import REPO, http_get  # noqa: E402
from tests.support.recorded import scraped_value  # noqa: E402

SLEEP, BATCH, STEPS, EVAL_EVERY = 0.03, 2, 5, 3  # every window read sleeps SLEEP
EVAL_READS = 4 * BATCH  # the example evaluates on 4 batches


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{phase: seconds} and the wall clock to the last iteration, read from the example's monitor
    just before it stops: STEPS steps, an evaluation at step 3, saves at 2 and 4 (none after the
    last iteration, so the phases add up to the wall clock to it)."""
    out = tmp_path_factory.mktemp("plain")
    sys.path.insert(0, str(REPO / "examples"))
    try:
        shared, plain = importlib.import_module("shared"), importlib.import_module("plain_pytorch")
        read = shared.Windows.__getitem__
        found = {}

        def slow_read(self, i):
            time.sleep(SLEEP)  # a loader slowed from outside the loop
            return read(self, i)

        class Watched(MonitoredRun):
            def close(self, *args, **kwargs):
                text = http_get(self.url + "/metrics").decode()
                labels = {"run_id": "plain-slowed", "rank": "0"}
                found.update({phase: scraped_value(text, "nanogpt_time_seconds_total", phase=phase, **labels)
                              for phase in PHASES})
                found["wall"] = (scraped_value(text, "nanogpt_last_iteration_timestamp_seconds", **labels)
                                 - process_start_time())
                super().close(*args, **kwargs)

        shared.Windows.__getitem__, plain.MonitoredRun = slow_read, Watched
        assert plain.main(["--metrics-port=0", "--run-id=plain-slowed", f"--out-dir={out}",
                           f"--max-steps={STEPS}", f"--batch-size={BATCH}", "--block-size=16", "--log-every=1",
                           f"--eval-every={EVAL_EVERY}", "--save-every=2"]) == 0
    finally:
        sys.path.remove(str(REPO / "examples"))
        for name in ("shared", "plain_pytorch"):  # generic names: leave none behind for other tests
            sys.modules.pop(name, None)
    return found


def test_the_loader_s_reads_are_data_wait(served):
    slept = (STEPS - 1) * BATCH * SLEEP  # the first step's read is startup
    assert served["data_wait"] >= 0.8 * slept
    assert served["data_wait"] < slept + 0.5 * EVAL_READS * SLEEP  # the evaluation's reads are not


def test_the_evaluation_s_reads_are_eval(served):
    assert served["eval"] >= 0.8 * EVAL_READS * SLEEP
    assert served["checkpoint"] > 0


def test_the_phases_add_up_to_the_wall_clock(served):
    phases = sum(served[phase] for phase in PHASES)
    assert served["lost"] == 0
    assert phases == pytest.approx(served["wall"], abs=0.05)
