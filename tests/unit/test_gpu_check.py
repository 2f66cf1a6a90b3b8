"""The judgements of scripts/gpu_check.sh (bench/gpu_check.py, bench/sync_probe.py): each claim on
the shapes a GPU run produces, and on /metrics as the collector records it. The script itself and
the real trainer's runs it judges are tests/integration/test_gpu_check.py."""

from __future__ import annotations

import pytest

from bench import gpu_check
from bench.sync_probe import SyncLog
from exporter import TrainingMonitor
from nanogpt_monitor.gpu import GpuCollector
from tests.support.gpu_double import FakeCuda, FakeGpu, FakeNvml
from tests.support.recorded import read_back


def run_with(losses: list[float], exit: int = 0) -> gpu_check.Run:
    lines = [f"iter {10 * i}: loss {loss}, time 5.00ms, tok/s 1000, mfu 1.00%, eta 0:00:01" for i, loss in enumerate(losses)]
    output = "\n".join(lines)
    return gpu_check.Run(exit, output, *gpu_check.parse_log(output), [])


def test_the_loss_claim_needs_every_loss_finite_to_the_last_iteration_and_a_real_fall():
    assert gpu_check.loss_claim("bf16", run_with([4.2, 3.5, 3.0, 2.9, 2.8]), iters=40).ok
    assert not gpu_check.loss_claim("bf16", run_with([4.2, 4.1, 4.0, 3.9, 3.9]), iters=40).ok  # -7 %: not learning
    assert not gpu_check.loss_claim("bf16", run_with([4.2, 3.5, float("nan"), 2.9, 2.8]), iters=40).ok
    assert not gpu_check.loss_claim("bf16", run_with([4.2, 3.5, 3.0, 2.9]), iters=40).ok  # stopped early
    assert not gpu_check.loss_claim("bf16", run_with([4.2, 3.5, 3.0, 2.9, 2.8], exit=1), iters=40).ok


@pytest.fixture
def scrape_of(tmp_path):
    """Makes the /metrics text of a run whose collector reads `device` (None: no GPU), after a log point."""

    def scrape(device: FakeGpu | None) -> str:
        monitor = TrainingMonitor(run_id="check", rank=0, directory=tmp_path / "run")
        if device is not None:
            monitor.add_device_collector(GpuCollector(monitor, ["cuda:0"], cuda=FakeCuda([device]),
                                                      nvml=FakeNvml([device])))
        monitor.log(iteration=1, loss=3.0)
        return read_back(monitor).exposition()

    return scrape


def test_the_gpu_metrics_claim_reads_the_collector_s_exposition(scrape_of):
    claim = gpu_check.gpu_metrics_claim([scrape_of(FakeGpu())] * 3)
    assert claim.ok, claim.figure
    assert claim.figure.startswith("3 scrapes; peak util 87%, reserved 4.00 GiB, power 412 W")


@pytest.mark.parametrize("device, problem", [(None, "missing"), (FakeGpu(utilization_percent=0), "zero utilization"),
                                             (FakeGpu(unsupported={"power"}), "missing power_watts")])
def test_the_gpu_metrics_claim_fails_on_absent_or_zero_readings(scrape_of, device, problem):
    claim = gpu_check.gpu_metrics_claim([scrape_of(device)])
    assert not claim.ok and problem in claim.figure


def test_the_sync_claim_allows_syncs_only_at_log_points():
    probe = {"exit": 0, "cuda": True, "iterations": list(range(21)),
             "syncs": [{"iteration": 0, "site": "train.py:1"}, {"iteration": 10, "site": "train.py:2"}]}
    claim = gpu_check.sync_claim(probe, log_interval=10, eval_interval=1000, iters=20)
    assert claim.ok and claim.figure == "0 syncs in 18 steps between log points (2 at log points)"
    probe["syncs"].append({"iteration": 13, "site": "train.py:3 x.item()"})
    claim = gpu_check.sync_claim(probe, log_interval=10, eval_interval=1000, iters=20)
    assert not claim.ok and "train.py:3 x.item()" in claim.figure
    assert not gpu_check.sync_claim({**probe, "syncs": [], "cuda": False}, 10, 1000, 20).ok  # no CUDA: no proof


def test_the_sync_log_attributes_a_sync_warning_to_the_running_iteration():
    log = SyncLog()
    log.started(7)
    log.warned(UserWarning("called a synchronizing CUDA operation"), UserWarning, "x.py", 1)
    assert [s["iteration"] for s in log.syncs] == [7]


def test_throughput_mfu_and_the_table():
    on, off = run_with([4.0] * 8), run_with([4.0] * 8)
    assert gpu_check.throughput_claim([on], [off]).ok  # equal rates: ratio 1.000
    mfu = gpu_check.mfu_claim([on], "NVIDIA H200", 989e12)
    assert mfu.ok and mfu.figure == "1.0% of 989 TFLOP/s (NVIDIA H200, peak from the table)"
    report = gpu_check.table([mfu, gpu_check.Claim("b", "x", False)]).splitlines()
    assert report[0].split() == ["result", "claim", "figure"]
    assert report[2].startswith("PASS    MFU plausible") and report[3].startswith("FAIL    b ")
    assert report[-1] == "1/2 claims hold"


def test_a_gpu_outside_the_peak_table_fails_the_mfu_claim_without_a_figure():
    claim = gpu_check.mfu_claim([run_with([4.0] * 8)], "NVIDIA Mystery 9000", None)
    assert not claim.ok and claim.figure.startswith("no MFU: NVIDIA Mystery 9000 is NOT in the peak table")
