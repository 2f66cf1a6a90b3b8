"""Test doubles shaped like torch.cuda and pynvml, for nanogpt_monitor.gpu on a machine without a GPU.

They answer with the same types and units as the real modules (bytes, percent, milliwatts,
MHz, a reason bitmask) and raise pynvml's own NVMLError, so the collector's mapping to
metrics is checked exactly. tests/unit/test_gpu.py checks that every function here exists in
pynvml / torch.cuda with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

GIB = 1024**3


@dataclass
class FakeGpu:
    """One device's raw readings, in the units the real APIs return."""

    name: str = "NVIDIA H200"
    uuid: str = "5b3c1f0e-8c2a-4d7e-9a61-0f2e3d4c5b6a"  # torch's spelling: no "GPU-" prefix
    total_memory: int = 143771 * 1024**2  # bytes (torch's device properties)
    allocated: int = 3 * GIB
    reserved: int = 4 * GIB
    peak_allocated: int = 5 * GIB
    alloc_retries: int = 3
    ooms: int = 1
    nvml_used: int = 6 * GIB
    nvml_total: int = 143771 * 1024**2
    utilization_percent: int = 87
    power_milliwatts: int = 412_345
    temperature_celsius: int = 61
    sm_clock_mhz: int = 1980
    reasons: int = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    unsupported: set = field(default_factory=set)  # getters that raise NOT_SUPPORTED
    failing: set = field(default_factory=set)  # getters that raise NVML_ERROR_UNKNOWN


class FakeCuda:
    """torch.cuda's allocator and device-property functions over a list of FakeGpu."""

    def __init__(self, gpus: list[FakeGpu], initialized: bool = True, current: int = 0):
        self.gpus, self.initialized, self.current = gpus, initialized, current

    def is_available(self) -> bool:
        return bool(self.gpus)

    def is_initialized(self) -> bool:
        return self.initialized

    def current_device(self) -> int:
        return self.current

    def get_device_properties(self, device=None):
        gpu = self.gpus[device]
        return SimpleNamespace(name=gpu.name, uuid=gpu.uuid, total_memory=gpu.total_memory)

    def memory_allocated(self, device=None) -> int:
        return self.gpus[device].allocated

    def memory_reserved(self, device=None) -> int:
        return self.gpus[device].reserved

    def max_memory_allocated(self, device=None) -> int:
        return self.gpus[device].peak_allocated

    def memory_stats(self, device=None) -> dict:
        gpu = self.gpus[device]
        return {"num_alloc_retries": gpu.alloc_retries, "num_ooms": gpu.ooms, "num_sync_all_streams": 0}


class FakeNvml:
    """pynvml's getters for the FakeGpus (found by "GPU-" + uuid), pynvml's constants and errors."""

    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, gpus: list[FakeGpu]):
        self.gpus = gpus
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu in self.gpus:
            if uuid == f"GPU-{gpu.uuid}":
                return gpu
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def _read(self, name: str, gpu: FakeGpu):
        self.calls.append(name)
        if name in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if name in gpu.failing:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        self._read("memory", handle)
        return SimpleNamespace(total=handle.nvml_total, used=handle.nvml_used, free=handle.nvml_total - handle.nvml_used)

    def nvmlDeviceGetUtilizationRates(self, handle):
        self._read("utilization", handle)
        return SimpleNamespace(gpu=handle.utilization_percent, memory=40)

    def nvmlDeviceGetPowerUsage(self, handle):
        self._read("power", handle)
        return handle.power_milliwatts

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._read("temperature", handle)
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return handle.temperature_celsius

    def nvmlDeviceGetClockInfo(self, handle, type):  # noqa: A002 (pynvml's parameter name)
        self._read("sm_clock", handle)
        assert type == pynvml.NVML_CLOCK_SM
        return handle.sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        self._read("throttle_reasons", handle)
        return handle.reasons
