"""The live page's Device section in a real Chromium: "no GPU" on CPU, the GPU's name, memory and
utilisation from /api/status when a (double) GPU is read, kept live by the page's script."""

from __future__ import annotations

import pytest

from exporter import TrainingMonitor
from nanogpt_monitor.gpu import GpuCollector
from tests.e2e.test_page import browser, page_factory  # noqa: F401 (fixtures)
from tests.support.gpu_double import GIB, FakeCuda, FakeGpu, FakeNvml

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture fails or skips with the reason
    expect = None

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path):
    """serve(device, gpus) -> (monitor, server); servers close after the pages (requested first)."""
    servers = []

    def start(device: str, gpus: list[FakeGpu]):
        monitor = TrainingMonitor(run_id="gpu-page", rank=0, directory=tmp_path / f"run{len(servers)}")
        if gpus:
            monitor.add_device_collector(GpuCollector(monitor, [device], cuda=FakeCuda(gpus), nvml=FakeNvml(gpus)))
        monitor.run_started(max_iterations=100, tokens_per_iteration=256, device=device, dtype="bfloat16")
        servers.append(monitor.serve(host="127.0.0.1", port=0))
        return monitor, servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_cpu_run_says_no_gpu_with_javascript_off(serve, page_factory):  # noqa: F811
    _, server = serve("cpu", [])
    page, _ = page_factory(java_script_enabled=False)
    page.goto(server.url + "/")
    assert page.get_by_test_id("fig-gpu").inner_text() == "no GPU"
    assert page.get_by_test_id("fig-gpu_memory").inner_text() == "\u2013"


def test_the_gpu_figures_follow_the_device_live(serve, page_factory):  # noqa: F811
    device = FakeGpu(reserved=12 * GIB, nvml_total=80 * GIB, utilization_percent=97, name="NVIDIA A100-SXM4-80GB")
    monitor, server = serve("cuda:0", [device])
    page, _ = page_factory()
    page.goto(server.url + "/")
    assert page.get_by_test_id("fig-gpu").inner_text() == "NVIDIA A100-SXM4-80GB (cuda:0)"
    assert page.get_by_test_id("fig-gpu_memory").inner_text() == "12.0 / 80.0 GiB"
    page.wait_for_function("() => window.__nanogpt")  # the script is running
    device.reserved, device.utilization_percent = 70 * GIB, 12
    monitor.log(iteration=1, loss=3.0, lr=1e-3, step_seconds=0.1, tokens_per_second=2560.0)  # -> a status refresh
    expect(page.get_by_test_id("fig-gpu_memory")).to_have_text("70.0 / 80.0 GiB", timeout=15_000)
    expect(page.get_by_test_id("fig-gpu_utilization")).to_have_text("12 %")
