"""Generate the provisioned Grafana dashboards: nanogpt-training and nanogpt-mobile.

    python -m grafana.generate              # rewrite grafana/dashboards/*.json
    python -m grafana.generate --out DIR    # write them elsewhere (the tests compare)

Built with grafana-foundation-sdk (Grafana 11.6 line). Below 769 px Grafana
stacks panels in JSON order, so panels are added most important first: state
and loss, then analytics, model, health. This module lays dashboards out;
the queries and panel styles are in grafana/panels.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, text, xychart
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueTextMode
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DashboardLinkType, DataTransformerConfig
from grafana_foundation_sdk.models.text import TextMode

from .gpu_panels import gpu_row, mobile_gpu_panels
from .time_panels import annotations, goodput_stat, time_row
from .panels import (
    DATASOURCE, LEGEND, bar_gauge, bottom_legend, eta_panel, firing_alerts_panel, history_table, loss_chart,
    loss_now_panel, model_sel, quantile_expr, query, run_variables, sel, stat_panel, state_panel, thresholds,
    time_chart, trend_panel,
)

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
VAL_LOSS = sel("nanogpt_eval_loss", 'split="val"')
LIVE_PAGE = "http://localhost:8000/"  # the trainer's own page (--metrics-port 8000, the default)


def base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    """Shared settings: uid-based datasource, the run variables, a link to the live page."""
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(["nanogpt"])
            .time("now-1h", "now").refresh("10s").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
            .readonly().variables(run_variables()).annotations(annotations())
            .link(dashboard.DashboardLink("Trainer live page").type(DashboardLinkType.LINK).url(LIVE_PAGE)
                  .icon("external link").target_blank(True)
                  .tooltip("The trainer's own page (full-resolution history, works without Prometheus)")))


def loss_vs_iteration() -> xychart.Panel:
    """Loss against iteration, one series per run, so runs of different speed line up."""
    return (xychart.Panel().title("Loss vs iteration").datasource(DATASOURCE)
            .description("Training loss against iteration number for each selected run.")
            .with_target(query(sel("nanogpt_iteration"), ref="iteration", table_format=True))
            .with_target(query(sel("nanogpt_train_loss"), ref="loss", table_format=True))
            # Both tables share Time, run_id and rank: merge gives one row per scrape with
            # "Value #iteration" and "Value #loss"; partition makes one frame (series) per run.
            .with_transformation(DataTransformerConfig(id_val="merge", options={}))
            .with_transformation(DataTransformerConfig(id_val="partitionByValues", options={
                "fields": ["run_id", "rank"], "keepFields": False}))
            .with_transformation(DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, "job": True, "instance": True},
                "renameByName": {"Value #iteration": "iteration", "Value #loss": "loss"}}))
            .point_size(xychart.XychartFieldConfigPointSize().fixed(3))
            .legend(bottom_legend()))


def training() -> dashboard.Dashboard:
    """The full view: overview, loss, analytics, model, health, CSV."""
    d = base("nanogpt-training", "nanoGPT training",
             "Loss, analytics, model and health of nanoGPT runs (nanogpt-monitor).")
    # Overview first: what a glance (or a phone) needs.
    d = (d.with_panel(state_panel().height(4).span(4))
         .with_panel(loss_now_panel("Loss").height(4).span(4))
         .with_panel(trend_panel().height(4).span(4))
         .with_panel(bar_gauge("Progress", "Iteration / max iterations (nanogpt:progress_ratio).",
                               query(sel("nanogpt:progress_ratio")), unit="percentunit").min(0).max(1)
                     .height(4).span(4))
         .with_panel(eta_panel().height(4).span(4))
         .with_panel(firing_alerts_panel().height(4).span(4))
         .with_panel(loss_chart().height(10).span(16))
         .with_panel(loss_vs_iteration().height(10).span(8)))
    d = (d.with_row(dashboard.Row("Analytics"))
         .with_panel(stat_panel("Iteration / max", "Current iteration and the run's target.",
                                query(sel("nanogpt_iteration"), legend="iteration " + LEGEND),
                                query(sel("nanogpt_max_iterations"), legend="max " + LEGEND, ref="B"),
                                decimals=0, text_mode=BigValueTextMode.VALUE_AND_NAME).height(4).span(4))
         .with_panel(stat_panel("Iterations / s", "nanogpt:iterations_per_second:rate1m.",
                                query(sel("nanogpt:iterations_per_second:rate1m")), graph=True)
                     .height(4).span(4))
         .with_panel(stat_panel("Tokens / s", "nanogpt:tokens_per_second:rate1m, per rank.",
                                query(sel("nanogpt:tokens_per_second:rate1m")), unit="short", graph=True)
                     .height(4).span(4))
         .with_panel(stat_panel("Average loss (plateau window)",
                                "Exact mean of the logged losses over the plateau window (10 min by default), "
                                "from the nanogpt_logged_loss summary (nanogpt:loss_mean:window).",
                                query(sel("nanogpt:loss_mean:window")), decimals=4).height(4).span(4))
         .with_panel(stat_panel("Best val loss", "Lowest validation loss of any evaluation in the time range.",
                                query(f"min_over_time({VAL_LOSS}[$__range])", instant=True), decimals=4,
                                colour="green").height(4).span(4))
         .with_panel(stat_panel("MFU", "Model FLOPs utilisation (nanogpt_mfu_ratio) against the device's known "
                                "peak FLOP/s; NaN where the peak is not known (every CPU) unless --peak_flops is given.",
                                query(sel("nanogpt_mfu_ratio")), unit="percentunit", decimals=1).height(4).span(4))
         .with_panel(time_chart("Step time p50 / p95", "Quantiles of the wall time per iteration over "
                                "the last minute, all ranks of each run together (the "
                                "nanogpt_iteration_duration_seconds histogram, recorded per run as "
                                "nanogpt:run_iteration_duration_seconds_bucket:rate1m).",
                                query(quantile_expr(0.5), legend="p50 {{run_id}}"),
                                query(quantile_expr(0.95), legend="p95 {{run_id}}", ref="B"), unit="s")
                     .height(8).span(8))
         .with_panel(time_chart("Learning rate", "nanogpt_learning_rate at each logged iteration.",
                                query(sel("nanogpt_learning_rate"))).height(8).span(8))
         .with_panel(time_chart("Grad norm", "Gradient norm before clipping (nanogpt_grad_norm).",
                                query(sel("nanogpt_grad_norm"))).height(8).span(8)))
    d = time_row(d)  # where the GPU-hours go: goodput, stragglers, spikes, input stalls
    d = gpu_row(d)  # device health beside the loss (empty without a GPU)
    d = (d.with_row(dashboard.Row("Model"))
         .with_panel(stat_panel("Model shape", "nanogpt_model_config: n_layer, n_head, n_embd, block_size, "
                                "vocab_size, dropout (rank 0's; every rank trains the same model).",
                                query(model_sel("nanogpt_model_config"), legend="{{field}} {{run_id}}"),
                                text_mode=BigValueTextMode.VALUE_AND_NAME).height(8).span(10))
         .with_panel(stat_panel("Parameters", "Total trainable parameters (tied weights counted once; rank 0's).",
                                query(model_sel("nanogpt_model_parameters", 'component="total"'),
                                      legend="{{run_id}}"), unit="short")
                     .height(8).span(4))
         .with_panel(bar_gauge("Parameters by component", "nanogpt_model_parameters per component (rank 0's): "
                               "the share of each part, as the live page's architecture diagram shades it. The "
                               "diagram itself is drawn from the module tree (/api/model), which is no time "
                               "series; open the trainer's page (/) to see it.",
                               query(model_sel("nanogpt_model_parameters", 'component!="total"'),
                                     legend="{{component}} {{run_id}}")).height(8).span(10)))
    d = (d.with_row(dashboard.Row("Health"))
         .with_panel(time_chart("Firing alerts", "ALERTS of the selected runs (prometheus/rules).",
                                query('ALERTS{alertstate="firing", run_id=~"$run_id"}',
                                      legend="{{alertname}} {{run_id}} ({{severity}})")).height(8).span(8))
         .with_panel(time_chart("Process memory", "Resident memory of each trainer process.",
                                query(sel("nanogpt:process_resident_memory_bytes")), unit="bytes")
                     .height(8).span(8))
         .with_panel(time_chart("Process CPU", "CPU cores used by each trainer process over the last minute.",
                                query(sel("nanogpt:process_cpu_seconds:rate1m")), unit="percentunit").height(8).span(8))
         .with_panel(time_chart("Tokens / s per rank", "nanogpt:tokens_per_second:rate1m, one line per rank "
                                "(DDP runs).", query(sel("nanogpt:tokens_per_second:rate1m"))).height(8).span(8))
         .with_panel(stat_panel("Non-finite losses", "Logged iterations whose loss was NaN or infinite.",
                                query(sel("nanogpt_loss_nonfinite_total")), decimals=0)
                     .thresholds(thresholds((None, "green"), (1, "red"))).height(8).span(8))
         .with_panel(live_page_note().height(8).span(8)))
    return d.with_row(dashboard.Row("History (CSV export)")).with_panel(history_table().height(10).span(24))


def live_page_note() -> text.Panel:
    """Where the trainer's own page is, and what it has that Prometheus lacks."""
    return (text.Panel().title("Trainer live page").mode(TextMode.MARKDOWN).content(
        f"[Open the trainer's live page]({LIVE_PAGE}) (rank 0; rank *k* serves on port 8000 + *k*).\n\n"
        "It shows every logged iteration at full resolution, the model's module tree and a CSV of the whole "
        "history (`/export.csv`), and works without Prometheus. From another machine or a phone, "
        "use the trainer host's address instead of `localhost` (start it with `--metrics-host 0.0.0.0`)."))


def mobile() -> dashboard.Dashboard:
    """Phone view: one column of short, full-width panels, most important first."""
    d = base("nanogpt-mobile", "nanoGPT mobile",
             "What to check on a phone: state, loss, trend, ETA, alerts, goodput, GPU busy and memory.")
    for panel, height in ((state_panel(), 3),
                          (loss_now_panel("Loss now"), 4),
                          (trend_panel(), 3), (eta_panel(), 3), (firing_alerts_panel(), 3), (goodput_stat(), 3),
                          *((panel, 3) for panel in mobile_gpu_panels()),
                          (loss_chart(evals=False), 8)):
        d = d.with_panel(panel.height(height).span(24))
    return d


def render(board: dashboard.Dashboard) -> str:
    """Dashboard JSON as committed: panel ids 1.. in JSON order, sorted keys, 2-space indent; the
    annotations drawn on the loss chart alone."""
    model = board.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    [loss_chart_id] = [p.id_val for p in model.panels if p.type_val == "timeseries" and p.title == "Loss"]
    for annotation in model.annotations.list_val or []:
        annotation.filter_val.ids = [loss_chart_id]
    return json.dumps(json.loads(json.dumps(model, cls=JSONEncoder)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARDS, help="folder to write the JSON files to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for uid, board in (("nanogpt-training", training()), ("nanogpt-mobile", mobile())):
        (args.out / f"{uid}.json").write_text(render(board))
    return 0


if __name__ == "__main__":
    sys.exit(main())
