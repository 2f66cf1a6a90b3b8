"""Where the time goes: goodput by phase, stragglers, input stalls and spikes (the training
dashboard's row and the phone's goodput stat), and the loss chart's annotations for
checkpoints, spikes and process starts.

Run-level figures (nanogpt:time_share, nanogpt:goodput_ratio) sum every rank of a run, so
they carry no `rank` and are selected by run alone; per-rank ones follow both pickers. The
straggler figures exist where the all-reduce wait is measured (gloo; docs/metrics.md).
Thresholds drawn on the panels are the alerts' (prometheus/rules/nanogpt-alerts.yml; the
tests read them from there). Layout is grafana/generate.py's; this module knows the queries.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, common, dashboard, heatmap, stat, timeseries
from grafana_foundation_sdk.models import common as enums
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.common import BigValueTextMode
from grafana_foundation_sdk.models.dashboard import (
    AnnotationPanelFilter, AnnotationQuery, DataTransformerConfig, DynamicConfigValue,
)

from .panels import DATASOURCE, LEGEND, bar_gauge, query, sel, stat_panel, thresholds, time_chart

RUN_ONLY = 'run_id=~"$run_id"'
LOW_GOODPUT = 0.5  # NanoGPTLowGoodput's threshold
INPUT_BOUND = 0.2  # NanoGPTInputBound's
STRAGGLER = 1.2  # NanoGPTStragglerRank's


def run_sel(metric: str, *matchers: str) -> str:
    """`metric{run_id=~"$run_id", ...}`: a run-level series, which has no rank to pick."""
    return f"{metric}{{{', '.join((RUN_ONLY, *matchers))}}}"


def goodput_stat(title: str = "Goodput") -> stat.Panel:
    """Step seconds over all seconds of each run: over the last 5 minutes and since its processes started."""
    return (stat_panel(title, "Share of the run's wall clock (all ranks) spent training: nanogpt_time_seconds_total"
                       "{phase=\"step\"} over all phases, over 5 minutes (nanogpt:goodput_ratio:rate5m) and since "
                       f"the run's processes started (nanogpt:goodput_ratio:run). NanoGPTLowGoodput fires below "
                       f"{LOW_GOODPUT:.0%} for 15 minutes.",
                       query(run_sel("nanogpt:goodput_ratio:rate5m"), legend="5 min {{run_id}}"),
                       query(run_sel("nanogpt:goodput_ratio:run"), legend="run {{run_id}}", ref="B"),
                       unit="percentunit", decimals=0, text_mode=BigValueTextMode.VALUE_AND_NAME)
            .thresholds(thresholds((None, "red"), (LOW_GOODPUT, "green"))).no_value("no iterations yet"))


def phase_shares_chart() -> timeseries.Panel:
    """Each phase's share of the run's wall clock, stacked to 100 %."""
    return (time_chart("Time by phase", "Each phase's share of the run's wall clock over 5 minutes, all "
                       "ranks (nanogpt:time_share:rate5m): step is training; data_wait, getting batches; eval "
                       "and checkpoint, evaluations and saves; startup, process start to the first iteration; "
                       "lost, iterations a resume redid. A phase the loop does not report stays inside step.",
                       query(run_sel("nanogpt:time_share:rate5m"), legend="{{phase}} {{run_id}}"),
                       unit="percentunit")
            .stacking(common.StackingConfig().mode(enums.StackingMode.NORMAL).group("A"))
            .fill_opacity(60).min(0).max(1))


def phase_seconds_gauge() -> bargauge.Panel:
    """Rank-seconds (GPU-seconds on GPUs) by phase, since the run's processes started."""
    return bar_gauge("Rank-seconds by phase", "Seconds of every rank of the run, by phase, since its processes "
                     "started (sum of nanogpt_time_seconds_total): on GPUs, the GPU-seconds each phase took.",
                     query(f"sum by (run_id, phase) ({sel('nanogpt_time_seconds_total')})",
                           legend="{{phase}} {{run_id}}"), unit="s")


def spikes_stat() -> stat.Panel:
    return (stat_panel("Spikes", "Logged losses and grad norms more than 6 sigma above the mean of the last "
                       "128 logged (NanoGPTLossSpike, NanoGPTGradNormSpike); /api/status names the last one's "
                       "iteration, and the loss chart marks each.",
                       query(sel("nanogpt_loss_spikes_total"), legend="loss {{run_id}}"),
                       query(sel("nanogpt_grad_norm_spikes_total"), legend="grad norm {{run_id}}", ref="B"),
                       decimals=0, text_mode=BigValueTextMode.VALUE_AND_NAME)
            .thresholds(thresholds((None, "green"), (1, "orange"))))


def busy_step_time_chart() -> timeseries.Panel:
    """Each rank's own time per iteration, the all-reduce wait out, and the run's median rank."""
    busy = sel("nanogpt:rank_busy_seconds_per_iteration:rate5m")
    return (time_chart("Step time per rank (all-reduce wait out)", "Each rank's seconds per iteration less "
                       "its wait for the other ranks in DDP's all-reduce (nanogpt:rank_busy_seconds_per_"
                       "iteration:rate5m), and the run's median rank. Every rank completes iterations at the "
                       "slowest one's pace; this is how long each took on its own. Where the wait is measured "
                       "(gloo).", query(busy), query(f"quantile by (run_id) (0.5, {busy})",
                                                    legend="median {{run_id}}", ref="B"), unit="s")
            .override_by_regexp("^median .*", [DynamicConfigValue(id_val="custom.lineWidth", value=3)]))


def straggler_heat_strip() -> heatmap.Panel:
    """One row per rank, coloured by its step time over the median's: a straggler is a hot row.

    Cells, not lines, so 1,024 ranks still fit; the join makes one row-per-field frame, the
    heatmap's "rows" layout (no buckets to calculate)."""
    return (heatmap.Panel().title("Ranks against the median").datasource(DATASOURCE)
            .description("Each rank's step time (all-reduce wait out) over its run's median rank, "
                         "nanogpt:rank_relative_step_time:rate5m: one row per rank, 1 is the median. "
                         f"NanoGPTStragglerRank fires at {STRAGGLER:g}x for 10 minutes. Where the wait is "
                         "measured (gloo).")
            .with_target(query(sel("nanogpt:rank_relative_step_time:rate5m"), legend="{{run_id}} {{rank}}"))
            .with_transformation(DataTransformerConfig(id_val="joinByField", options={"byField": "Time",
                                                                                      "mode": "outer"}))
            .calculate(False)
            .rows_frame(heatmap.RowsHeatmapOptions().layout(enums.HeatmapCellLayout.UNKNOWN).value("x median"))
            .color(heatmap.HeatmapColorOptions().mode(heatmap_model.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .scale(heatmap_model.HeatmapColorScale.LINEAR).steps(32).min(1).max(2 * STRAGGLER - 1))
            .cell_values(heatmap.CellValues().decimals(2))
            .y_axis(heatmap.YAxisConfig().axis_label("rank"))
            .cell_gap(0))


def data_wait_chart() -> timeseries.Panel:
    return (time_chart("Data wait per rank", "Share of each rank's training time (step + data_wait) spent "
                       "getting batches, over 5 minutes (nanogpt:data_wait_ratio:rate5m). NanoGPTInputBound "
                       f"fires above {INPUT_BOUND:.0%} for 10 minutes (the dashed line).",
                       query(sel("nanogpt:data_wait_ratio:rate5m")), unit="percentunit")
            .min(0).thresholds(thresholds((None, "green"), (INPUT_BOUND, "red")))
            .thresholds_style(common.GraphThresholdsStyleConfig().mode(enums.GraphThresholdsStyleMode.DASHED)))


def time_row(d: dashboard.Dashboard) -> dashboard.Dashboard:
    """The training dashboard's "Where the time goes" row."""
    return (d.with_row(dashboard.Row("Where the time goes"))
            .with_panel(goodput_stat().height(8).span(4))
            .with_panel(phase_shares_chart().height(8).span(10))
            .with_panel(phase_seconds_gauge().height(8).span(6))
            .with_panel(spikes_stat().height(8).span(4))
            .with_panel(busy_step_time_chart().height(8).span(8))
            .with_panel(straggler_heat_strip().height(8).span(8))
            .with_panel(data_wait_chart().height(8).span(8)))


# ---------------------------------------------------------------- annotations

class PrometheusAnnotation(AnnotationQuery):
    """An annotation query read by Grafana's Prometheus datasource: the SDK's model plus the keys
    that datasource reads besides `expr` (step, titleFormat, tagKeys, useValueForTime), which
    @grafana/schema's generic AnnotationQuery leaves out."""

    def __init__(self, name: str, expr: str, colour: str, title: str, *, step: str = "30s",
                 value_for_time: bool = False):
        super().__init__(name=name, datasource=DATASOURCE, enable=True, icon_color=colour, expr=expr,
                         filter_val=AnnotationPanelFilter(exclude=False, ids=[]))
        self.step, self.title_format, self.value_for_time = step, title, value_for_time

    def build(self) -> "PrometheusAnnotation":
        """Its own builder: the dashboard builder asks each annotation for build()."""
        return self

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "step": self.step, "titleFormat": self.title_format,
                "tagKeys": "run_id,rank", "useValueForTime": self.value_for_time}


# The keys Grafana's Prometheus datasource reads from an annotation (its prepareAnnotation moves expr
# and step into a query target), which @grafana/schema's generic type lacks: the schema test sets them aside.
PROMETHEUS_ANNOTATION_KEYS = ("expr", "step", "titleFormat", "tagKeys", "useValueForTime")


def annotations() -> list[PrometheusAnnotation]:
    """Checkpoints, spikes and process starts (a resume starts a new process), for the loss chart.

    Saves and starts are marked at their own time: the gauge's value is the time (milliseconds
    for Grafana). Spikes count up, so a window of two steps sees each increase at least once."""
    spikes = " or ".join(
        f'label_replace(increase({sel(name)}[1m]) > 0, "kind", "{kind}", "", "")'
        for name, kind in (("nanogpt_loss_spikes_total", "loss"), ("nanogpt_grad_norm_spikes_total", "grad norm")))
    return [
        PrometheusAnnotation("Checkpoints", f"({sel('nanogpt_last_checkpoint_timestamp_seconds')} > 0) * 1000",
                             "purple", "checkpoint " + LEGEND, value_for_time=True),
        PrometheusAnnotation("Spikes", spikes, "orange", "{{kind}} spike " + LEGEND),
        PrometheusAnnotation("Process starts", f"({sel('nanogpt_training_start_time_seconds')} > 0) * 1000",
                             "blue", "process start " + LEGEND, value_for_time=True),
    ]
