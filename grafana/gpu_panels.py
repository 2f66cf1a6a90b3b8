"""The GPU panels: the trainer's own device metrics (nanogpt_gpu_*) and, when the compose `gpu`
profile runs NVIDIA's DCGM exporter, DCGM's fields for the same devices.

The trainer's series carry run_id and rank; DCGM's carry the device (`UUID`, `gpu`,
`modelName`) but no run. `dcgm()` joins them on the UUID (the trainer's `uuid`
label is spelt as DCGM spells it), so the $run_id and $rank pickers select DCGM
series too. Without a GPU (or without DCGM) these panels show no data. Layout
is grafana/generate.py's; this module knows the queries.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.common import BigValueTextMode

from .panels import query, sel, stat_panel, thresholds, time_chart

GPU_LEGEND = "{{run_id}} rank {{rank}} gpu {{gpu}}"

# DCGM exporter field names the panels read (dcgm-exporter's default counters; SM_ACTIVE is a
# profiling field, present on data-centre GPUs only). Units as DCGM exports them.
DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": "percent (0..100)",
    "DCGM_FI_PROF_SM_ACTIVE": "ratio (0..1)",
    "DCGM_FI_DEV_FB_USED": "MiB",
    "DCGM_FI_DEV_POWER_USAGE": "W",
}


def dcgm(expr: str) -> str:
    """A DCGM expression tagged with the run and rank whose trainer reports the same GPU UUID.

    The right side is 1 per (UUID, run_id, rank) of the selected runs; `topk by (UUID)` keeps
    one run per device, so two runs sharing a GPU cannot make the join ambiguous."""
    runs = (f'label_replace(max by (uuid, run_id, rank) ({sel("nanogpt_gpu_memory_total_bytes")}), '
            f'"UUID", "$1", "uuid", "(.+)")')
    return f"{expr} * on (UUID) group_left (run_id, rank) (0 * topk by (UUID) (1, {runs}) + 1)"


def memory_ratio() -> str:
    """The higher of reserved (torch) and used (NVML) memory over the device total, as
    NanoGPTGPUMemoryNearLimit reads it."""
    return (f'max without (source) (label_replace({sel("nanogpt_gpu_memory_reserved_bytes")}, '
            f'"source", "reserved", "", "") or label_replace({sel("nanogpt_gpu_memory_used_bytes")}, '
            f'"source", "used", "", "")) / {sel("nanogpt_gpu_memory_total_bytes")}')


def utilization_chart():
    return (time_chart(
        "GPU utilisation", "Share of time a kernel ran: NVML as the trainer reads it at each scrape "
        "(nanogpt_gpu_utilization_ratio); with DCGM, its GPU_UTIL and SM_ACTIVE (the share of SMs busy, "
        "a truer measure of how much of the GPU the kernels fill). NanoGPTGPUUnderutilized fires on the "
        "trainer's figure.",
        query(sel("nanogpt_gpu_utilization_ratio"), legend="util " + GPU_LEGEND),
        query(dcgm("DCGM_FI_DEV_GPU_UTIL / 100"), legend="DCGM util " + GPU_LEGEND, ref="B"),
        query(dcgm("DCGM_FI_PROF_SM_ACTIVE"), legend="DCGM SM active " + GPU_LEGEND, ref="C"),
        unit="percentunit").min(0).max(1))


def memory_chart():
    return time_chart(
        "GPU memory", "This process's tensors (allocated), its caching allocator's reservation (reserved) "
        "and peak, the device's memory in use by every process (NVML used; DCGM FB_USED) and the total.",
        query(sel("nanogpt_gpu_memory_allocated_bytes"), legend="allocated " + GPU_LEGEND),
        query(sel("nanogpt_gpu_memory_reserved_bytes"), legend="reserved " + GPU_LEGEND, ref="B"),
        query(sel("nanogpt_gpu_memory_peak_allocated_bytes"), legend="peak " + GPU_LEGEND, ref="C"),
        query(sel("nanogpt_gpu_memory_used_bytes"), legend="used " + GPU_LEGEND, ref="D"),
        query(sel("nanogpt_gpu_memory_total_bytes"), legend="total " + GPU_LEGEND, ref="E"),
        query(dcgm("DCGM_FI_DEV_FB_USED * 1048576"), legend="DCGM used " + GPU_LEGEND, ref="F"),
        unit="bytes")


def memory_full_stat(title: str = "GPU memory full"):
    return (stat_panel(title, "Reserved or used memory over the device total, whichever is higher "
                       "(what NanoGPTGPUMemoryNearLimit watches).",
                       query(memory_ratio(), legend=GPU_LEGEND), unit="percentunit", decimals=0, graph=True)
            .thresholds(thresholds((None, "green"), (0.9, "orange"), (0.95, "red"))))


def utilization_stat(title: str = "GPU utilisation"):
    return (stat_panel(title, "NVML utilisation of each selected run's GPU (nanogpt_gpu_utilization_ratio).",
                       query(sel("nanogpt_gpu_utilization_ratio"), legend=GPU_LEGEND), unit="percentunit",
                       decimals=0, graph=True)
            .thresholds(thresholds((None, "red"), (0.5, "green"))))


def allocator_stat():
    """The caching allocator's retries and OOMs over the time range: memory pressure before an OOM ends the run."""
    return (stat_panel("Allocator retries / OOMs", "Times this process's caching allocator freed its cache and "
                       "retried a cudaMalloc, and the out-of-memory errors it raised, in the time range "
                       "(torch.cuda.memory_stats num_alloc_retries, num_ooms). Retries slow every step they "
                       "happen in; a steady count means the batch nearly fills the device.",
                       query(f'increase({sel("nanogpt_gpu_allocator_retries_total")}[$__range])',
                             legend="retries " + GPU_LEGEND, instant=True),
                       query(f'increase({sel("nanogpt_gpu_allocator_ooms_total")}[$__range])',
                             legend="OOMs " + GPU_LEGEND, ref="B", instant=True),
                       decimals=0, text_mode=BigValueTextMode.VALUE_AND_NAME)
            .thresholds(thresholds((None, "green"), (1, "orange"))))


def gpu_row(d: dashboard.Dashboard) -> dashboard.Dashboard:
    """The training dashboard's GPU row: busy, memory, power, heat, clocks and throttling."""
    return (d.with_row(dashboard.Row("GPU"))
            .with_panel(utilization_stat().height(4).span(5))
            .with_panel(memory_full_stat().height(4).span(5))
            .with_panel(stat_panel("Peak memory", "Peak memory held by this process's tensors "
                                   "(torch.cuda.max_memory_allocated).",
                                   query(sel("nanogpt_gpu_memory_peak_allocated_bytes"), legend=GPU_LEGEND),
                                   unit="bytes", decimals=1).height(4).span(5))
            .with_panel(allocator_stat().height(4).span(4))
            .with_panel(stat_panel("GPU", "Device name and total memory of each selected run and rank.",
                                   query(sel("nanogpt_gpu_memory_total_bytes"), legend="{{name}} ({{uuid}})"),
                                   unit="bytes", decimals=0, text_mode=BigValueTextMode.VALUE_AND_NAME)
                        .height(4).span(5))
            .with_panel(utilization_chart().height(8).span(12))
            .with_panel(memory_chart().height(8).span(12))
            .with_panel(time_chart("GPU power", "Power draw: NVML via the trainer, and DCGM's POWER_USAGE.",
                                   query(sel("nanogpt_gpu_power_watts"), legend=GPU_LEGEND),
                                   query(dcgm("DCGM_FI_DEV_POWER_USAGE"), legend="DCGM " + GPU_LEGEND, ref="B"),
                                   unit="watt").height(8).span(6))
            .with_panel(time_chart("GPU temperature", "Core temperature (NVML).",
                                   query(sel("nanogpt_gpu_temperature_celsius"), legend=GPU_LEGEND),
                                   unit="celsius").height(8).span(6))
            .with_panel(time_chart("SM clock", "Current SM clock (NVML); it drops when the GPU throttles.",
                                   query(sel("nanogpt_gpu_sm_clock_hertz"), legend=GPU_LEGEND),
                                   unit="hertz").height(8).span(6))
            .with_panel(time_chart("Throttle reasons", "NVML's reasons for holding the clocks down, while "
                                   "active (gpu_idle is normal between steps; power and thermal ones are not).",
                                   query(sel("nanogpt_gpu_throttle_reasons") + " == 1",
                                         legend="{{reason}} " + GPU_LEGEND))
                        .height(8).span(6)))


def mobile_gpu_panels() -> list:
    """The phone view's compact GPU pair: how busy, how full."""
    return [utilization_stat(), memory_full_stat()]
