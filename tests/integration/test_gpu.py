"""nanogpt_monitor.gpu where a process of its own is the proof: a fresh interpreter's imports, and
promtool's reading of the GPU families (their mapping, value by value, is tests/unit/test_gpu.py)."""

from __future__ import annotations

import subprocess
import sys

from exporter import TrainingMonitor
from nanogpt_monitor import gpu
from tests.support.gpu_double import FakeCuda, FakeGpu, FakeNvml
from tests.support.procs import REPO, require
from tests.support.recorded import read_back


def test_importing_the_module_does_not_import_pynvml():
    code = "import sys, nanogpt_monitor.gpu; assert 'pynvml' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_the_exposition_passes_promtool_check_metrics(tmp_path):
    monitor, device = TrainingMonitor(run_id="run-7", rank=1, directory=tmp_path / "run"), FakeGpu()
    collector = gpu.GpuCollector(monitor, ("cuda:0",), cuda=FakeCuda([device]), nvml=FakeNvml([device]))
    monitor.add_device_collector(collector)
    monitor.log(iteration=1, loss=3.0)  # the collector is read at log points
    text = read_back(monitor).exposition()
    gpu_text = "".join(line + "\n" for line in text.splitlines() if "nanogpt_gpu_" in line)
    result = subprocess.run([require("promtool"), "check", "metrics"], input=gpu_text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
