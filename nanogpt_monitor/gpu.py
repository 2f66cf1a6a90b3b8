"""Device health beside the loss: a prometheus-client collector of the GPUs, read at each log point.

    from nanogpt_monitor.gpu import register_gpu_collector
    register_gpu_collector(monitor, devices=["cuda:0"])   # once, next to TrainingMonitor(...)

Per CUDA device the training uses, each TrainingMonitor.log reads torch.cuda's allocator figures
for this process (allocated, reserved, peak) and NVML's for the whole device (utilisation, memory,
power, temperature, SM clock, throttle reasons), labelled `gpu` (torch's index), `uuid` and `name`
under the catalogue's `gpu` entries; the monitor records them as gauges and as /api/status's
`gpus`. They are read in the training process because only it can ask its allocator.

collect() runs on the training thread at log points only, and none of its reads synchronises with
the device (the allocator keeps its statistics on the host; NVML asks the driver: some tens of
microseconds a reading). Without CUDA it yields nothing, not zeros; without nvidia-ml-py or a
driver NVML's families are absent and torch's remain; a reading the device does not support (power
on some boards, utilisation under MIG) is left out. Any other error is logged once and counted by
the monitor, never raised into the training loop.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.catalogue import BY_KEY, GPU_METRICS

__all__ = ["GpuCollector", "register_gpu_collector", "THROTTLE_BITS"]

log = logging.getLogger(__name__)

# NVML's clock event ("throttle") reason bits, nvml.h nvmlClocksEventReason*; the names are the
# catalogue's THROTTLE_REASONS (a test checks both against pynvml's constants).
THROTTLE_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


class GpuCollector:
    """A prometheus-client custom collector (collect() only) for the given CUDA devices.

    `devices`: CUDA devices as "cuda:N", "cuda", N or torch.device; "cuda", "auto" and None
    mean the current device; others ("cpu", "mps") are ignored. `cuda` and `nvml` are the
    torch.cuda and pynvml modules unless a test hands in doubles of the same shape.
    """

    def __init__(self, monitor, devices: Optional[Iterable[Any]] = None, cuda: Any = None, nvml: Any = None):
        self.monitor = monitor
        self._devices = [None] if devices is None else list(devices)
        self._cuda = cuda
        self._nvml = nvml  # None: not tried yet; False: unavailable here
        self._handles: dict[str, Any] = {}  # uuid -> NVML handle

    # --- the collector protocol --------------------------------------------------------------

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One family per catalogue GPU metric that has samples; nothing without a usable GPU."""
        families = {m.key: (CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily)(
            m.name, m.help, labels=m.labels) for m in GPU_METRICS}
        try:
            for index in self._indices():
                self._collect_device(index, families)
        except Exception as e:  # a log point must never fail because of a GPU reading
            self.monitor.report_error("gpu.collect", e)
        for family in families.values():
            if family.samples:
                yield family

    # --- devices -----------------------------------------------------------------------------

    def _torch_cuda(self):
        if self._cuda is None:
            import torch.cuda  # torch is this package's base: cheap once the trainer imported it

            self._cuda = torch.cuda
        return self._cuda

    def _indices(self) -> list[int]:
        """torch device indices to read; empty while CUDA is absent or not initialised (reading
        then would create a CUDA context the training may never have wanted)."""
        cuda = self._torch_cuda()
        if not cuda.is_available() or not cuda.is_initialized():
            return []
        indices = []
        for device in self._devices:
            index = _cuda_index(device, cuda)
            if index is not None and index not in indices:
                indices.append(index)
        return indices

    def _collect_device(self, index: int, families: dict[str, GaugeMetricFamily]) -> None:
        cuda = self._torch_cuda()
        props = cuda.get_device_properties(index)
        uuid = _nvml_uuid(props.uuid)
        labels = [self.monitor.run_id, str(self.monitor.rank), str(index), uuid, str(props.name)]

        def add(key: str, value: float, *extra: str) -> None:
            families[key].add_metric([*labels, *extra], float(value))

        # torch's caching allocator: host-side counters of this process, no device sync
        add("gpu_memory_allocated", cuda.memory_allocated(index))
        add("gpu_memory_reserved", cuda.memory_reserved(index))
        add("gpu_memory_peak_allocated", cuda.max_memory_allocated(index))
        stats = cuda.memory_stats(index)  # the allocator's own counts, on the host too
        add("gpu_allocator_retries", stats.get("num_alloc_retries", 0))
        add("gpu_allocator_ooms", stats.get("num_ooms", 0))
        nvml = self._nvml_module()
        handle = self._handle(nvml, uuid) if nvml else None
        if handle is None:
            add("gpu_memory_total", props.total_memory)
            return
        read = _Reader(nvml, handle, self.monitor)
        memory = read("memory", nvml.nvmlDeviceGetMemoryInfo)
        if memory is not None:
            add("gpu_memory_used", memory.used)
            add("gpu_memory_total", memory.total)
        else:
            add("gpu_memory_total", props.total_memory)
        if (rates := read("utilization", nvml.nvmlDeviceGetUtilizationRates)) is not None:
            add("gpu_utilization", rates.gpu / 100.0)  # percent of the sample period
        if (milliwatts := read("power", nvml.nvmlDeviceGetPowerUsage)) is not None:
            add("gpu_power", milliwatts / 1000.0)
        if (celsius := read("temperature", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)) is not None:
            add("gpu_temperature", celsius)
        if (mhz := read("sm_clock", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM)) is not None:
            add("gpu_sm_clock", mhz * 1e6)
        if (mask := read("throttle_reasons", nvml.nvmlDeviceGetCurrentClocksEventReasons)) is not None:
            for reason in BY_KEY["gpu_throttle_reasons"].values:
                add("gpu_throttle_reasons", 1.0 if int(mask) & THROTTLE_BITS[reason] else 0.0, reason)

    # --- NVML ------------------------------------------------------------------------------

    def _nvml_module(self):
        """pynvml, initialised on first use; False (and one log line) where it cannot be."""
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py, the optional extra `.[gpu]`

                pynvml.nvmlInit()
                self._nvml = pynvml
            except ImportError:
                log.info("gpu: nvidia-ml-py is not installed; exporting torch.cuda memory only (pip install '.[gpu]')")
                self._nvml = False
            except Exception as e:  # NVMLError: no driver library, no permission
                log.info("gpu: NVML is unavailable (%s); exporting torch.cuda memory only", e)
                self._nvml = False
        return self._nvml

    def _handle(self, nvml, uuid: str):
        """The NVML handle of a device by UUID (indices differ under CUDA_VISIBLE_DEVICES)."""
        if uuid not in self._handles:
            try:
                self._handles[uuid] = nvml.nvmlDeviceGetHandleByUUID(uuid)
            except nvml.NVMLError as e:
                self.monitor.report_error("gpu.nvml_handle", e)
                return None
        return self._handles[uuid]


class _Reader:
    """Calls one NVML getter: None, silently, for a reading the device does not support; None, counted
    as an exporter error, for any other NVML failure."""

    def __init__(self, nvml, handle, monitor):
        self.nvml, self.handle, self.monitor = nvml, handle, monitor

    def __call__(self, what: str, getter, *args):
        try:
            return getter(self.handle, *args)
        except self.nvml.NVMLError as e:
            if getattr(e, "value", None) != self.nvml.NVML_ERROR_NOT_SUPPORTED:
                self.monitor.report_error(f"gpu.{what}", e)
            return None


def _cuda_index(device: Any, cuda) -> Optional[int]:
    """torch's index of a CUDA device spec, or None for a device that is not CUDA."""
    if device is None:
        return cuda.current_device()
    if isinstance(device, int):
        return device
    text = str(device)
    if text in ("auto", "cuda"):
        return cuda.current_device()
    if text.startswith("cuda:"):
        return int(text.split(":", 1)[1])
    return None


def _nvml_uuid(uuid: Any) -> str:
    """torch's device UUID as NVML and DCGM spell it: "GPU-" and 8-4-4-4-12 lowercase hex digits
    (MIG devices keep their "MIG-" name)."""
    text = str(uuid).strip().lower()
    if text.startswith("mig-"):
        return "MIG-" + text[4:]
    digits = text.removeprefix("gpu-").replace("-", "")
    if len(digits) != 32:  # not a plain UUID: pass it on and let NVML say whether it knows it
        return f"GPU-{text.removeprefix('gpu-')}"
    return "GPU-" + "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))


def register_gpu_collector(monitor, devices: Optional[Iterable[Any]] = None) -> Optional[GpuCollector]:
    """Add a GpuCollector for `devices` (default: the current CUDA device) to the monitor, which reads
    it at each log point, so /metrics and /api/status carry the device figures; returns it (None on error)."""
    try:
        collector = GpuCollector(monitor, devices)
        monitor.add_device_collector(collector)
        return collector
    except Exception as e:  # device health is optional: never stop the caller for it
        monitor.report_error("register_gpu_collector", e)
        return None
