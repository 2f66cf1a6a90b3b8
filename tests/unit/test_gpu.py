"""nanogpt_monitor.gpu: device health read at each log point, named by the catalogue, absent without a GPU.

The machine running the tests has no GPU: the real torch.cuda proves the "nothing without CUDA"
half; doubles shaped like torch.cuda and pynvml (tests/support/gpu_double.py) prove the mapping
from their readings to metrics, value by value, as the monitor process serves them
(tests/support/recorded.py reads the run directory as it does).
"""

from __future__ import annotations

import inspect
import sys

import pynvml
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from exporter import TrainingMonitor, catalogue
from nanogpt_monitor import gpu
from tests.support.gpu_double import FakeCuda, FakeGpu, FakeNvml
from tests.support.recorded import read_back

RUN, RANK = "run-7", 1


@pytest.fixture
def new_monitor(tmp_path):
    """Makes a monitor recording into the test's run directory."""
    return lambda: TrainingMonitor(run_id=RUN, rank=RANK, directory=tmp_path / "run")


@pytest.fixture
def monitor_with(new_monitor):
    """Makes a monitor whose GPU collector reads doubles (nvml=False: NVML is unavailable), after one
    log point, which is when the collector is read."""

    def make(gpus=(), nvml=None, devices=("cuda:0",), initialized=True):
        monitor = new_monitor()
        gpus = list(gpus)
        collector = gpu.GpuCollector(monitor, devices, cuda=FakeCuda(gpus, initialized=initialized),
                                     nvml=FakeNvml(gpus) if nvml is None else nvml)
        monitor.add_device_collector(collector)
        log_point(monitor)
        return monitor

    return make


def log_point(monitor, iteration: int = 1) -> None:
    monitor.log(iteration=iteration, loss=3.0)


def scrape(monitor) -> dict[str, list]:
    """Family name -> samples, as Prometheus parses the monitor process's text exposition."""
    return {f.name: f.samples for f in text_string_to_metric_families(read_back(monitor).exposition())}


def gpu_families(monitor) -> dict[str, list]:
    return {name: samples for name, samples in scrape(monitor).items() if name.startswith("nanogpt_gpu_")}


def errors(monitor) -> float:
    return read_back(monitor).value("nanogpt_exporter_errors_total", run_id=RUN, rank=str(RANK))


def value(monitor, metric: str, **labels) -> float:
    return read_back(monitor).value(metric, run_id=RUN, rank=str(RANK), **labels)


def status(monitor) -> dict:
    return read_back(monitor).view(RANK).status()


def device_labels(device: FakeGpu, index: int = 0) -> dict:
    return {"gpu": str(index), "uuid": f"GPU-{device.uuid}", "name": device.name}


# --- no GPU ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="proves the no-CUDA case")
def test_without_cuda_the_collector_yields_nothing_and_counts_no_error(new_monitor):
    monitor = new_monitor()
    assert gpu.register_gpu_collector(monitor, devices=None) is not None
    log_point(monitor)
    assert gpu_families(monitor) == {}
    assert errors(monitor) == 0
    assert status(monitor)["gpus"] == []


def test_a_cpu_device_is_not_read(monitor_with):
    monitor = monitor_with([FakeGpu()], devices=["cpu"])
    assert gpu_families(monitor) == {}


def test_before_cuda_is_initialised_nothing_is_read(monitor_with):
    # reading then would create a CUDA context in a process that may not mean to use the GPU
    monitor = monitor_with([FakeGpu()], initialized=False)
    assert gpu_families(monitor) == {}


# --- the mapping, exactly ------------------------------------------------------------------------


def test_each_reading_maps_to_its_metric_in_base_units(monitor_with):
    device = FakeGpu()
    monitor = monitor_with([device])
    labels = device_labels(device)
    expected = {
        "nanogpt_gpu_memory_allocated_bytes": device.allocated,
        "nanogpt_gpu_memory_reserved_bytes": device.reserved,
        "nanogpt_gpu_memory_peak_allocated_bytes": device.peak_allocated,
        "nanogpt_gpu_allocator_retries_total": device.alloc_retries,
        "nanogpt_gpu_allocator_ooms_total": device.ooms,
        "nanogpt_gpu_memory_used_bytes": device.nvml_used,
        "nanogpt_gpu_memory_total_bytes": device.nvml_total,
        "nanogpt_gpu_utilization_ratio": 0.87,
        "nanogpt_gpu_power_watts": 412.345,
        "nanogpt_gpu_temperature_celsius": 61,
        "nanogpt_gpu_sm_clock_hertz": 1.98e9,
    }
    for name, want in expected.items():
        assert value(monitor, name, **labels) == pytest.approx(want, rel=1e-12), name
    active = {r for r in catalogue.THROTTLE_REASONS
              if value(monitor, "nanogpt_gpu_throttle_reasons", **labels, reason=r) == 1}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    assert all(value(monitor, "nanogpt_gpu_throttle_reasons", **labels, reason=r) in (0, 1)
               for r in catalogue.THROTTLE_REASONS)
    assert errors(monitor) == 0


def test_throttle_reason_bits_are_nvml_s():
    assert tuple(gpu.THROTTLE_BITS) == catalogue.THROTTLE_REASONS
    for reason, bit in gpu.THROTTLE_BITS.items():
        camel = "".join(part.capitalize() for part in reason.split("_"))
        assert getattr(pynvml, f"nvmlClocksEventReason{camel}") == bit, reason


def test_each_device_the_trainer_uses_is_labelled_by_index_uuid_and_name(monitor_with):
    a, b = FakeGpu(), FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="0a0b0c0d-1111-2222-3333-444455556666")
    monitor = monitor_with([a, b], devices=["cuda:1"])
    [sample] = gpu_families(monitor)["nanogpt_gpu_memory_reserved_bytes"]
    assert sample.labels == {"run_id": RUN, "rank": str(RANK), "gpu": "1",
                             "uuid": "GPU-0a0b0c0d-1111-2222-3333-444455556666", "name": "NVIDIA A100-SXM4-80GB"}
    assert sample.value == b.reserved


def test_the_default_device_is_the_current_one(new_monitor):
    a, b = FakeGpu(), FakeGpu(uuid="0a0b0c0d-1111-2222-3333-444455556666", reserved=7)
    monitor = new_monitor()
    monitor.add_device_collector(gpu.GpuCollector(monitor, None, cuda=FakeCuda([a, b], current=1), nvml=FakeNvml([a, b])))
    log_point(monitor)
    [sample] = gpu_families(monitor)["nanogpt_gpu_memory_reserved_bytes"]
    assert (sample.labels["gpu"], sample.value) == ("1", 7)


# --- partial answers and failures ------------------------------------------------------------------


def test_without_nvml_only_torch_figures_and_the_device_total_remain(monitor_with):
    device = FakeGpu()
    monitor = monitor_with([device], nvml=False)
    assert sorted(gpu_families(monitor)) == sorted([
        "nanogpt_gpu_memory_allocated_bytes", "nanogpt_gpu_memory_reserved_bytes",
        "nanogpt_gpu_memory_peak_allocated_bytes", "nanogpt_gpu_allocator_retries", "nanogpt_gpu_allocator_ooms",
        "nanogpt_gpu_memory_total_bytes"])
    assert value(monitor, "nanogpt_gpu_memory_total_bytes", **device_labels(device)) == device.total_memory
    assert errors(monitor) == 0


def test_without_nvidia_ml_py_installed_nvml_is_skipped_quietly(new_monitor, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    monitor = new_monitor()
    monitor.add_device_collector(gpu.GpuCollector(monitor, ["cuda:0"], cuda=FakeCuda([FakeGpu()])))
    log_point(monitor)
    assert "nanogpt_gpu_memory_reserved_bytes" in gpu_families(monitor)
    assert "nanogpt_gpu_utilization_ratio" not in gpu_families(monitor)
    assert errors(monitor) == 0


def test_a_reading_the_device_does_not_support_is_left_out_silently(monitor_with):
    monitor = monitor_with([FakeGpu(unsupported={"power", "utilization"})])
    families = gpu_families(monitor)
    assert "nanogpt_gpu_power_watts" not in families and "nanogpt_gpu_utilization_ratio" not in families
    assert "nanogpt_gpu_temperature_celsius" in families
    assert errors(monitor) == 0


def test_an_nvml_failure_is_counted_and_the_other_readings_still_recorded(monitor_with):
    monitor = monitor_with([FakeGpu(failing={"temperature"})])
    families = gpu_families(monitor)
    assert "nanogpt_gpu_temperature_celsius" not in families
    assert "nanogpt_gpu_sm_clock_hertz" in families
    assert errors(monitor) >= 1


def test_an_exception_inside_collect_never_breaks_the_log_point(new_monitor):
    class Broken(FakeCuda):
        def get_device_properties(self, device=None):
            raise RuntimeError("driver went away")

    monitor = new_monitor()
    monitor.add_device_collector(gpu.GpuCollector(monitor, ["cuda:0"], cuda=Broken([FakeGpu()]), nvml=False))
    log_point(monitor, iteration=4)
    assert value(monitor, "nanogpt_train_loss") == 3.0
    assert read_back(monitor).view(RANK).history.last().iteration == 4
    assert errors(monitor) == 1


# --- /api/status --------------------------------------------------------------------------------


def test_status_lists_each_gpu_with_the_collector_s_values(monitor_with):
    device = FakeGpu()
    [listed] = status(monitor_with([device]))["gpus"]
    assert listed["gpu"] == "0" and listed["uuid"] == f"GPU-{device.uuid}" and listed["name"] == device.name
    assert listed["memory_reserved_bytes"] == device.reserved
    assert listed["memory_total_bytes"] == device.nvml_total
    assert listed["utilization_ratio"] == pytest.approx(0.87)
    assert listed["throttle_reasons"]["hw_thermal_slowdown"] == 1


def test_the_devices_are_read_at_each_log_point_not_when_scraped(new_monitor):
    device = FakeGpu()
    monitor = new_monitor()
    collector = gpu.GpuCollector(monitor, ["cuda:0"], cuda=FakeCuda([device]), nvml=FakeNvml([device]))
    monitor.add_device_collector(collector)
    assert gpu_families(monitor) == {} and status(monitor)["gpus"] == []  # no log point yet
    log_point(monitor, 1)
    device.reserved = 9 * 2**30
    assert value(monitor, "nanogpt_gpu_memory_reserved_bytes", **device_labels(device)) == 4 * 2**30
    log_point(monitor, 2)
    assert value(monitor, "nanogpt_gpu_memory_reserved_bytes", **device_labels(device)) == 9 * 2**30
    assert status(monitor)["gpus"][0]["memory_reserved_bytes"] == 9 * 2**30  # the page shows the same values


# --- the doubles stay honest ---------------------------------------------------------------------


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


@pytest.mark.parametrize("name", [n for n in vars(FakeNvml) if n.startswith("nvml")])
def test_the_nvml_double_has_pynvml_s_signatures(name):
    assert _parameters(getattr(FakeNvml, name)) == _parameters(getattr(pynvml, name))


@pytest.mark.parametrize("name", [n for n in vars(FakeCuda) if not n.startswith("_")])
def test_the_cuda_double_has_torch_s_functions(name):
    assert [p.split("_")[0] for p in _parameters(getattr(FakeCuda, name))] == \
        [p.split("_")[0] for p in _parameters(getattr(torch.cuda, name))]


# --- the figures of a CUDA out-of-memory error -------------------------------------------------------


def test_the_oom_memory_report_gives_allocated_reserved_and_device_total(monkeypatch):
    from types import SimpleNamespace

    from nanogpt.device import memory_report

    cuda0 = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 70 * 2**30 if device == cuda0 else 0)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 78.5 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    assert memory_report(cuda0) == "allocated 70.00 GiB, reserved 78.50 GiB, device total 80.00 GiB"
    assert memory_report(torch.device("cpu")).startswith("allocated n/a, reserved n/a, device total n/a")


@pytest.mark.parametrize("torch_uuid", ["5b3c1f0e-8c2a-4d7e-9a61-0f2e3d4c5b6a", "GPU-5b3c1f0e-8c2a-4d7e-9a61-0f2e3d4c5b6a",
                                        "5B3C1F0E8C2A4D7E9A610F2E3D4C5B6A"])
def test_the_uuid_label_is_spelt_as_nvml_and_dcgm_spell_it(torch_uuid):
    assert gpu._nvml_uuid(torch_uuid) == "GPU-5b3c1f0e-8c2a-4d7e-9a61-0f2e3d4c5b6a"
