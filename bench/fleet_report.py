"""The tables bench/fleet.py prints: one column per fleet size, then the day-long figures."""

from __future__ import annotations

import json
from collections import defaultdict

GOALS = "goals at 1,024 ranks: <= 150 series/rank, rule eval < 1 s, dashboard query p95 < 2 s over 24 h, 1 notification per faulty run per alert"


def _row(name: str, values: list[str]) -> str:
    return f"| {name} | " + " | ".join(values) + " |"


def print_report(results: dict, args) -> None:
    """Markdown tables of the live phase (per size) and the day phase, then the raw figures as JSON."""
    live = results["live"]
    if live:
        print(f"\nLive: rules scaled down {args.scale}x, scrape and evaluation every {args.scrape_interval}s, "
              "Kubernetes-style target labels\n")
        print(_row("figure", [f"{r['ranks']} ranks ({r['runs']} x {r['ranks_per_run']})" for r in live]))
        print(_row("---", ["---"] * len(live)))
        rows = [
            ("series per rank (scraped + Prometheus' 5 per target + recorded)", lambda r: f"{r['series_per_rank']:.0f} "
             f"({r['scraped_per_rank']:.0f} + {r['per_target_per_rank']:.2f} + {r['recorded_per_rank']:.1f})"),
            ("series in Prometheus' head", lambda r: f"{r['series_total']:,.0f}"),
            ("scrape duration p50 / p99", lambda r: f"{r['scrape_p50_ms']:.1f} / {r['scrape_p99_ms']:.1f} ms"),
            ("rule eval, max per group", lambda r: ", ".join(f"{g} {v * 1000:.0f} ms" for g, v in sorted(r["rule_eval_max_s"].items()))),
            ("slowest rules (median evaluation)", lambda r: _slowest(r.get("rule_eval_p50_s", {}))),
            ("machine load (1-min average, start / end; 2 cores)",
             lambda r: " / ".join(f"{v:.1f}" for v in r["load_avg_1m"])),
            ("Prometheus CPU", lambda r: f"{r.get('prometheus_cpu_cores', float('nan')):.2f} cores"),
            ("dashboard query p95, last hour (worst)", lambda r: _worst(r["queries_1h_p95_s"])),
            ("notifications per faulty run per alert", lambda r: _notifications(r)),
            ("other notifications (false alarms)", lambda r: _false_alarms(r)),
            ("exporter CPU (all ranks: recording + monitors)", lambda r: f"{r['exporter_cpu_cores']:.2f} cores "
             f"({r['recording_cpu_cores']:.2f} + {r['monitor_cpu_cores']:.2f}), {r['exporter_cpu_ms_per_rank_s']:.2f} ms/s per rank"),
            ("exporter RSS (run processes + monitors)", lambda r: f"{r['exporter_rss_mib']:.0f} MiB ({r['recording_rss_mib']:.0f} + "
             f"{r['monitor_rss_mib']:.0f} in {r['monitors']}), {r['exporter_rss_mib_per_rank']:.1f} MiB per rank"),
            ("Prometheus RSS", lambda r: f"{r['prometheus_rss_mib']:.0f} MiB"),
        ]
        for name, cell in rows:
            print(_row(name, [cell(r) for r in live]))
    day = results.get("day")
    if day:
        print(f"\nDay: {day['series']:,} series, {day['samples']:,} samples backfilled in {day['backfill_s']:.0f} s "
              f"({args.day_step}s resolution), compacted into {day['blocks']:.0f} blocks; p95 of {args.repeats} runs\n")
        print("| query | all runs, 24 h | one run, 24 h | all runs, 1 h |")
        print("| --- | --- | --- | --- |")
        for key in day["queries_all_24h_p95_s"]:
            cells = [_seconds(day[column][key]) for column in
                     ("queries_all_24h_p95_s", "queries_run_24h_p95_s", "queries_all_1h_p95_s")]  # fmt: skip
            print(f"| {key} | " + " | ".join(cells) + " |")
        for column in ("queries_all_24h_p95_s", "queries_run_24h_p95_s", "queries_all_1h_p95_s"):
            print(f"\nworst, {column[8:-6].replace('_', ' ')}: {_worst(day[column])}")
        groups = defaultdict(float)
        for name, seconds in day["rule_cost_s"].items():
            groups[name.split("/")[0]] += seconds
        print("\nrule expressions at the last backfilled minute (engine time, summed per group): "
              + ", ".join(f"{g} {v * 1000:.0f} ms" for g, v in sorted(groups.items()))
              + "; slowest: " + _slowest(day["rule_cost_s"]))
    for failure in results.get("broke", []):
        print(f"\nbroke: {failure}")
    print(f"\n{GOALS}")
    print("\nraw: " + json.dumps(results, default=str))


def _slowest(rules: dict, n: int = 3) -> str:
    top = sorted(rules.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name.split('/')[-1]} {seconds * 1000:.0f} ms" for name, seconds in top)


def _seconds(value) -> str:
    return value if isinstance(value, str) else f"{value:.3f} s"


def _worst(queries: dict) -> str:
    refused = [k for k, v in queries.items() if isinstance(v, str)]
    if refused:
        return f"{len(refused)} refused ({', '.join(refused)}): {queries[refused[0]]}"
    key = max(queries, key=queries.get)
    return f"{queries[key]:.3f} s ({key})"


def _expected(key: str) -> bool:
    """Whether a notification ("<alertname> fleetN-i-<behaviour>") is its faulty run's own alert."""
    from bench.fleet import FAULTS

    alertname, run_id = key.split(" ", 1)
    return FAULTS.get(run_id.rsplit("-", 1)[-1]) == alertname


def _false_alarms(r: dict) -> str:
    others = {k: v for k, v in r["notifications"].items() if not _expected(k)}
    return ", ".join(f"{k}: {v}" for k, v in sorted(others.items())) or "none"


def _notifications(r: dict) -> str:
    faulty = {k: v for k, v in r["notifications"].items() if _expected(k)}
    return ", ".join(f"{k.split()[0].replace('NanoGPT', '')}: {v} ({r['ranks_per_notification_group'].get(k, 0)} ranks)"
                     for k, v in sorted(faulty.items()))
