"""Panel and query helpers shared by both nanoGPT dashboards (grafana-foundation-sdk 11.6).

Every query goes to the datasource with uid `prometheus` (grafana/provisioning)
and filters by the dashboard variables `$run_id` and `$rank`. This module knows
PromQL and panel styling; which panels exist and where they go is
grafana/generate.py. It writes nothing.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from grafana_foundation_sdk.models import common as enums
from grafana_foundation_sdk.models.common import BigValueColorMode, BigValueGraphMode, BigValueTextMode
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef, DataTransformerConfig, DynamicConfigValue, SpecialValueMap, SpecialValueMatch, Threshold,
    ThresholdsMode, ValueMap, ValueMappingResult, VariableHide, VariableRefresh, VariableSort,
)

from exporter.catalogue import STATES

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")

# The run and rank the viewer picked: multi-value variables expand to a regex.
RUN = 'run_id=~"$run_id", rank=~"$rank"'
LEGEND = "{{run_id}} rank {{rank}}"
RANK_ZERO = 'run_id=~"$run_id", rank="0"'  # the selected runs' rank 0 (model_sel)

# SPEC: nanogpt_training_state{state=...}, encoded 0..3 so one series per run
# carries the state and a range query's last value survives the run's end.
STATE_COLOURS = ("blue", "green", "text", "red")

# nanogpt:loss_trend values (prometheus/rules/nanogpt-recording.yml), same
# names and colours as the exporter's trend on the live page.
TRENDS = {1: ("improving", "green"), 0: ("plateau", "orange"), -1: ("rising", "red")}


def sel(metric: str, *matchers: str) -> str:
    """`metric{run_id=~"$run_id", rank=~"$rank", ...}`."""
    return f"{metric}{{{', '.join((RUN, *matchers))}}}"


def model_sel(metric: str, *matchers: str) -> str:
    """`metric` of rank 0 of the selected runs: every DDP rank trains the same model, so one rank's
    figures say it all (and a 1,024-rank run does not draw 1,024 copies)."""
    return f"{metric}{{{', '.join((RANK_ZERO, *matchers))}}}"


def state_expr() -> str:
    """0 starting, 1 running, 2 finished, 3 failed: one series per run and rank.

    nanogpt:training_state:code (prometheus/rules/nanogpt-recording.yml) encodes the state label
    in the catalogue's order; `max by` folds the targets a rank went through (a resume) into one."""
    return f"max by (run_id, rank) ({sel('nanogpt:training_state:code')})"


def trend_expr() -> str:
    """nanogpt:loss_trend, or NaN ("unknown") for a run whose windows hold too few points yet."""
    return (f"{sel('nanogpt:loss_trend')} or on (run_id, rank) "
            f"({sel('nanogpt_iteration')} * 0 + NaN)")


def quantile_expr(q: float) -> str:
    """Step time quantile of each selected run over all its ranks, from the run-level bucket rates
    recorded every evaluation (summing 19 buckets of every rank at every step was the slowest query)."""
    buckets = 'nanogpt:run_iteration_duration_seconds_bucket:rate1m{run_id=~"$run_id"}'
    return f"histogram_quantile({q}, sum by (le, run_id) ({buckets}))"


def query(expr: str, legend: str = LEGEND, ref: str = "A", instant: bool = False,
          table_format: bool = False) -> prometheus.Dataquery:
    """A Prometheus target; instant ones ask for "now", the others for the time range."""
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(PromQueryFormat.TABLE)
    return q


def bottom_legend() -> common.VizLegendOptions:
    """A one-line list legend under the chart (it stays readable on a phone)."""
    return (common.VizLegendOptions().display_mode(enums.LegendDisplayMode.LIST)
            .placement(enums.LegendPlacement.BOTTOM).show_legend(True))


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=colour) for value, colour in steps])


def value_map(names: dict[int, tuple[str, str]], unknown: str | None = None) -> list:
    """Value mappings: number -> (text, colour), plus NaN/null -> `unknown` in grey."""
    mapping = [ValueMap(options={str(k): ValueMappingResult(text=t, color=c, index=i)
                                 for i, (k, (t, c)) in enumerate(names.items())})]
    if unknown:
        for match in (SpecialValueMatch.NA_N, SpecialValueMatch.NULL):
            mapping.append(SpecialValueMap(options=dashboard.DashboardSpecialValueMapOptions()
                                           .match(match).result(ValueMappingResult(text=unknown, color="text"))
                                           .build()))
    return mapping


def stat_panel(title: str, description: str, *targets: prometheus.Dataquery, unit: str = "none",
               decimals: float | None = None, colour: str = "blue", text_mode=BigValueTextMode.AUTO,
               graph: bool = False) -> stat.Panel:
    """A single-figure panel showing each series' last value in the time range."""
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE).targets(list(targets))
             .unit(unit).reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .color_mode(BigValueColorMode.VALUE).text_mode(text_mode)
             .graph_mode(BigValueGraphMode.AREA if graph else BigValueGraphMode.NONE)
             .thresholds(thresholds((None, colour))))
    return panel.decimals(decimals) if decimals is not None else panel


def loss_now_panel(title: str) -> stat.Panel:
    """The last logged training loss, with its sparkline."""
    return stat_panel(title, "Training loss at the last logged iteration.", query(sel("nanogpt_train_loss")),
                      decimals=4, graph=True)


def state_panel(title: str = "Training state") -> stat.Panel:
    """starting / running / finished / failed, coloured."""
    return (stat_panel(title, "Last reported state of each selected run (nanogpt_training_state).",
                       query(state_expr()), text_mode=BigValueTextMode.VALUE_AND_NAME)
            .mappings(value_map({i: (s, c) for i, (s, c) in enumerate(zip(STATES, STATE_COLOURS))}))
            .no_value("no data for this run"))


def trend_panel() -> stat.Panel:
    """improving / plateau / rising, by the plateau alert's own recording rule."""
    return (stat_panel("Loss trend", "nanogpt:loss_trend: relative change of the mean logged loss between the "
                       "last two plateau windows (10 min each by default; improving above +1 %, rising below "
                       "-1 %). Unknown until both windows hold 5 logged losses.",
                       query(trend_expr(), instant=True), text_mode=BigValueTextMode.VALUE_AND_NAME)
            .mappings(value_map(TRENDS, unknown="unknown")).no_value("unknown"))


def eta_panel() -> stat.Panel:
    return (stat_panel("ETA", "Time left at the current rate (nanogpt:eta_seconds, only while running).",
                       query(sel("nanogpt:eta_seconds"), instant=True), unit="s", decimals=0)
            .no_value("not running"))


def firing_alerts_panel() -> stat.Panel:
    """How many alerts fire for the selected runs: green 0, red otherwise."""
    expr = 'count(ALERTS{alertstate="firing", run_id=~"$run_id"}) or vector(0)'
    return stat_panel("Firing alerts", "Alerts of prometheus/rules firing now for the selected runs.",
                      query(expr, legend="firing", instant=True)).thresholds(thresholds((None, "green"), (1, "red")))


def loss_chart(title: str = "Loss", evals: bool = True) -> timeseries.Panel:
    """Train loss, its EMA and the eval losses over time; evaluation markers as bars (checkpoints,
    spikes and starts are the dashboard's annotations, grafana/time_panels.py)."""
    panel = (timeseries.Panel().title(title).datasource(DATASOURCE)
             .description("Training loss at each logged iteration, its debiased EMA (smoothed), and the "
                          "eval losses. Bars mark evaluations; the dashboard's annotations mark checkpoints, "
                          "loss and grad-norm spikes and process starts (a resume starts a new one).")
             .with_target(query(sel("nanogpt_train_loss"), legend="train " + LEGEND))
             .with_target(query(sel("nanogpt_train_loss_ema"), legend="smoothed " + LEGEND, ref="B"))
             .legend(bottom_legend())
             .tooltip(common.VizTooltipOptions().mode(enums.TooltipDisplayMode.MULTI)
                      .sort(enums.SortOrder.NONE))
             .span_nulls(True).line_width(1).unit("none")
             .override_by_regexp("^smoothed .*", [DynamicConfigValue(id_val="custom.lineWidth", value=3)]))
    if not evals:
        return panel
    val_loss = sel("nanogpt_eval_loss", 'split="val"')
    markers = [
        DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
        DynamicConfigValue(id_val="custom.axisPlacement", value="hidden"),
        DynamicConfigValue(id_val="custom.fillOpacity", value=40),
        DynamicConfigValue(id_val="min", value=0), DynamicConfigValue(id_val="max", value=1),
    ]
    return (panel
            .with_target(query(sel("nanogpt_eval_loss", 'split="train"'), legend="eval train " + LEGEND, ref="C"))
            .with_target(query(sel("nanogpt_eval_loss", 'split="val"'), legend="eval val " + LEGEND, ref="D"))
            # $__rate_interval > the step + one scrape, so no change falls between two windows.
            .with_target(query(f"changes({val_loss}[$__rate_interval]) > 0", legend="evaluation " + LEGEND, ref="E"))
            .override_by_regexp("^eval .*", [DynamicConfigValue(id_val="custom.showPoints", value="always"),
                                              DynamicConfigValue(id_val="custom.pointSize", value=6)])
            .override_by_query("E", [*markers, DynamicConfigValue(id_val="color", value={
                "mode": "fixed", "fixedColor": "yellow"})]))


def time_chart(title: str, description: str, *targets: prometheus.Dataquery, unit: str = "none") -> timeseries.Panel:
    """A plain line chart of the given targets."""
    return (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(list(targets)).unit(unit).span_nulls(True).line_width(1)
            .legend(bottom_legend()))


def bar_gauge(title: str, description: str, target: prometheus.Dataquery, unit: str = "short") -> bargauge.Panel:
    return (bargauge.Panel().title(title).description(description).datasource(DATASOURCE).with_target(target)
            .unit(unit).orientation(enums.VizOrientation.HORIZONTAL)
            .display_mode(enums.BarGaugeDisplayMode.BASIC)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .thresholds(thresholds((None, "blue"))))


def history_table() -> table.Panel:
    """One row per scrape: time, run, iteration, loss, smoothed loss, lr; clean for Inspect > Data > CSV."""
    fields = [("nanogpt_iteration", "iteration"), ("nanogpt_train_loss", "loss"),
              ("nanogpt_train_loss_ema", "loss_ema"), ("nanogpt_learning_rate", "lr")]
    targets = [query(sel(m), legend=name, ref=name, table_format=True) for m, name in fields]
    rename = {f"Value #{name}": name for _, name in fields}
    return (table.Panel().title("Loss history (CSV: Inspect > Data > Download CSV)").datasource(DATASOURCE)
            .description("Prometheus' samples of the selected runs, one row per scrape. The trainer's own "
                         "/export.csv holds every logged iteration at full resolution.")
            .targets(targets)
            .with_transformation(DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"job": True, "instance": True, "__name__": True},
                "indexByName": {"Time": 0, "run_id": 1, "rank": 2, **{v: i + 3 for i, v in enumerate(rename)}},
                "renameByName": rename}))
            .with_transformation(DataTransformerConfig(id_val="sortBy", options={
                "sort": [{"field": "Time", "desc": True}]})))


class QueryVariable(dashboard.QueryVariable):
    """The SDK's query variable less `auto*`: those belong to interval variables, and Grafana's
    Dashboard type (the schema the tests validate against) has no such fields on a query variable."""

    def build(self):
        variable = super().build()
        variable.auto = variable.auto_min = variable.auto_count = None
        return variable


def run_variables() -> list:
    """$run_id (multi, every run seen in the time range) and $rank (all by default)."""
    def variable(name: str, label: str, source: str, include_all: bool):
        v = (QueryVariable(name).label(label).datasource(DATASOURCE)
             .query({"qryType": 1, "query": f"label_values({source}, {name})",
                     "refId": "PrometheusVariableQueryEditor-VariableQuery"})
             # On time range change: a finished run stays listed while it is in the range.
             .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
             .multi(True).include_all(include_all).hide(VariableHide.DONT_HIDE))
        return v.all_value(".*") if include_all else v
    return [variable("run_id", "run", "nanogpt_training_start_time_seconds", True),
            variable("rank", "rank", 'nanogpt_training_start_time_seconds{run_id=~"$run_id"}', True)]
