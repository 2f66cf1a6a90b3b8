"""Benchmark (not a test): the monitoring stack at 64, 256 and 1,024 ranks, and a day of 1,024 ranks.

Live phase, per size: simulated runs of 8..64 ranks (tests/support/fleet.py: the real exporter, one
recording TrainingMonitor per rank, synthetic losses, no torch; one process per run), in nodes of
8 ranks, each node's monitor process (`exporter serve`, a child of the run's process) serving its
ranks on one port: one target per node, a pod, discovered through file_sd groups with
Kubernetes-style target labels and scraped by a real Prometheus running the project's rules scaled
down (every window and `for:` divided by --scale, so a 10m plateau window lasts 10m/scale),
alerting through a real Alertmanager with the project's routing to a webhook. One run plateaus,
one goes NaN, one stalls, one has a straggling rank, one spikes, the rest learn. Reported: series per rank and in total, scrape duration
p99 (one scrape reads a node's 8 ranks), rule-group evaluation time, p95 latency of every
dashboard query over the last hour, notifications per faulty run per alert (and any other: a false
alarm), and the exporter's CPU
and memory: the run processes' (recording) plus the monitor processes', per rank.

Day phase: 24 h x 1,024 ranks backfilled with promtool (bench/fleet_backfill.py), a Prometheus on
those blocks evaluating the real, unscaled rules, and every dashboard query timed over 24 h and 1 h.

    python bench/fleet.py                       # 64, 256 and 1,024 ranks, then the day
    python bench/fleet.py --ranks 64 --no-day   # the quick one (about 2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.fleet_backfill import RANKS_PER_RUN, backfill  # noqa: E402
from tests.support.alerting import Webhook, alertmanager_config  # noqa: E402
from tests.support.grafana import load_dashboards, parse_label_values, substitute, targets, variable_query, variables  # noqa: E402
from tests.support.procs import PROMETHEUS_RULES, REPO, Alertmanager, Prometheus, wait_until  # noqa: E402
from tests.support.rules import write_scaled_rules  # noqa: E402

FAULTS = {"plateau": "NanoGPTLossPlateau", "nan": "NanoGPTLossNotFinite", "stall": "NanoGPTTrainingStalled",
          "straggler": "NanoGPTStragglerRank", "spike": "NanoGPTLossSpike"}


def api(prometheus: Prometheus, path: str, **params):
    """GET /api/v1/<path> with a generous timeout (the helper's 5 s is for tests)."""
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/{path}?{query}", timeout=120) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def query(prometheus: Prometheus, expr: str, **params) -> list:
    return api(prometheus, "query_range" if "step" in params else "query", query=expr, **params)["result"]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))] if values else float("nan")


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds used, resident MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))  # fmt: skip
    return ticks / 100, rss / 1024


def monitor_pids(parent: int) -> list[int]:
    """The monitor processes a run process started: its children running `exporter serve`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent and b"exporter" in command and b"serve" in command:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def usage_of(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds, resident MiB) summed over processes."""
    usages = [proc_usage(pid) for pid in pids]
    return sum(u[0] for u in usages), sum(u[1] for u in usages)


def self_metrics(prometheus: Prometheus) -> dict[str, list]:
    """Prometheus' own /metrics as name -> [(labels, value)]."""
    text = urllib.request.urlopen(f"{prometheus.url}/metrics", timeout=10).read().decode()
    out = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def rule_times(prometheus: Prometheus) -> dict[str, float]:
    """Seconds the last evaluation of each rule took (/api/v1/rules evaluationTime), by rule name."""
    return {f"{g['name']}/{r['name']}": r["evaluationTime"] for g in api(prometheus, "rules")["groups"]
            for r in g["rules"]}  # fmt: skip


def time_queries(prometheus: Prometheus, run_id: str, range_seconds: int, scrape: int, step: int,
                 repeats: int, end: float | None = None) -> dict[str, float | str]:
    """p95 seconds of every dashboard query (and variable query) over the `range_seconds` before `end`
    (default now); a query Prometheus refuses (too many samples) is reported as a string instead."""
    end = end or time.time()
    start = end - range_seconds
    jobs = []
    for uid, board in load_dashboards().items():
        for title, target in targets(board):
            expr = substitute(target["expr"], run_id, range_seconds, scrape, step)
            jobs.append((f"{uid[8:]}/{title[:28]}/{target['refId']}", expr, target.get("instant")))
        for name, variable in variables(board).items():
            selector, label = parse_label_values(variable_query(variable))
            jobs.append((f"{uid[8:]}/variable {name}", (substitute(selector, run_id, range_seconds), label), "label"))
    timings, failed = defaultdict(list), {}
    for _ in range(repeats):  # interleaved: each round runs every query once
        for key, expr, kind in jobs:
            if key in failed:
                continue
            t0 = time.perf_counter()
            try:
                if kind == "label":
                    api(prometheus, f"label/{expr[1]}/values", **{"match[]": expr[0], "start": start, "end": end})
                elif kind:
                    query(prometheus, expr, time=end)
                else:
                    query(prometheus, expr, start=start, end=end, step=step)
            except urllib.error.HTTPError as e:
                failed[key] = f"refused after {time.perf_counter() - t0:.1f} s: {json.loads(e.read())['error']}"
                continue
            timings[key].append(time.perf_counter() - t0)
    return {key: failed.get(key) or percentile(timings[key], 95) for key, _, _ in jobs}


def rule_costs(prometheus: Prometheus, at: float, repeats: int) -> dict[str, float]:
    """Median engine seconds (query stats execTotalTime) of every rule's expression as an instant query at `at`:
    what each evaluation costs over this data, without appending results or waiting for the CPU."""
    costs = {}
    for path in sorted(PROMETHEUS_RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                runs = [api(prometheus, "query", query=rule["expr"], time=at, stats="all")["stats"]["timings"]["execTotalTime"]
                        for _ in range(repeats)]  # fmt: skip
                costs[f"{group['name']}/{rule.get('record') or rule['alert']}"] = statistics.median(runs)
    return costs


def settle_compaction(prometheus: Prometheus) -> None:
    """Wait until Prometheus has merged the backfilled 2 h blocks (it starts about a minute in), as a
    Prometheus a day old has: timing queries meanwhile would time the compaction too."""
    def state():
        own = self_metrics(prometheus)
        return own["prometheus_tsdb_compactions_triggered_total"][0][1], own["prometheus_tsdb_blocks_loaded"][0][1]

    wait_until(lambda: state()[0] >= 1, timeout=300, interval=5, what="the first compaction")
    previous = None
    while (current := state()[1]) != previous:
        previous = current
        time.sleep(20)


def live(ranks: int, ranks_per_run: int, scale: int, scrape: int, workdir: Path, repeats: int) -> dict:
    """Run the live phase for one fleet size; returns its figures."""
    runs = ranks // ranks_per_run
    behaviours = [*FAULTS] + ["learn"] * (runs - len(FAULTS))
    window = 600 / scale
    workers, webhook, started = [], Webhook(), []
    try:
        for i, behaviour in enumerate(behaviours):
            run_id = f"fleet{ranks}-{i:02d}-{behaviour}"
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "tests.support.fleet", "--run-id", run_id, "--ranks", str(ranks_per_run),
                 "--behaviour", behaviour, "--window-seconds", str(window)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO))  # fmt: skip
        groups = []
        for worker in workers:  # one port per node of the run: its monitor, one pod's target
            hello = json.loads(worker.stdout.readline())
            for pod, port in enumerate(hello["ports"]):
                groups.append({"targets": [f"127.0.0.1:{port}"],
                               "labels": {"namespace": "ml", "pod": f"{hello['run_id']}-{pod}",
                                          "node": f"gpu-node-{len(groups):04d}"}})  # fmt: skip
        monitors = [pid for worker in workers for pid in monitor_pids(worker.pid)]
        assert len(monitors) == len(groups), f"{len(monitors)} monitor processes for {len(groups)} nodes"
        t_start = time.time()
        # the project's routing; group_wait and group_interval shrunk as the rule timings are
        alertmanager = Alertmanager(workdir / "alertmanager", alertmanager_config(webhook.url, "10s", "30s"))
        started.append(alertmanager)
        prometheus = Prometheus(workdir / "prometheus", [], target_groups=groups, scrape_interval=f"{scrape}s",
                                evaluation_interval=f"{scrape}s", rule_files=write_scaled_rules(workdir / "rules", scale),
                                alertmanager=alertmanager.address)  # fmt: skip
        started.append(prometheus)
        wait_until(lambda: len(query(prometheus, 'up{job="nanogpt"} == 1')) == len(groups), timeout=300, interval=2,
                   what=f"{len(groups)} targets up")
        wait_until(lambda: len(query(prometheus, 'nanogpt_iteration{job="nanogpt"}')) == ranks, timeout=60, interval=2,
                   what=f"{ranks} ranks scraped")
        recording0, monitor0 = usage_of([w.pid for w in workers]), usage_of(monitors)
        load0 = os.getloadavg()[0]  # the machine is shared: say how busy it was
        prometheus_cpu0 = self_metrics(prometheus)["process_cpu_seconds_total"][0][1]
        t0 = time.time()
        rule_max, per_rule = defaultdict(float), defaultdict(list)

        def first_notifications():
            for name, value in [(k, v) for labels, v in self_metrics(prometheus)["prometheus_rule_group_last_duration_seconds"]
                                for k in [labels["rule_group"].rsplit(";", 1)[-1]]]:  # fmt: skip
                rule_max[name] = max(rule_max[name], value)
            for name, seconds in rule_times(prometheus).items():
                per_rule[name].append(seconds)
            got = {(b["groupLabels"].get("alertname"), b["groupLabels"].get("run_id")) for _, b in webhook.notifications}
            return all((FAULTS[b], f"fleet{ranks}-{i:02d}-{b}") in got for i, b in enumerate(behaviours[:len(FAULTS)]))

        wait_until(first_notifications, timeout=600, interval=2, what="the three faulty runs' alerts")
        settle = time.time() + 40  # > group_interval: a straggling rank's alert would be sent by then
        while time.time() < settle:
            first_notifications()
            time.sleep(2)
        t1 = time.time()
        recording1, monitor1 = usage_of([w.pid for w in workers]), usage_of(monitors)
        own = self_metrics(prometheus)
        series_total = own["prometheus_tsdb_head_series"][0][1]
        scraped = float(query(prometheus, 'sum(scrape_samples_scraped{job="nanogpt"})')[0]["value"][1]) / ranks
        per_target = 5 * len(groups) / ranks  # up, scrape_duration_seconds, ...: Prometheus' own, per target
        recorded = float(query(prometheus, 'count({__name__=~"nanogpt:.+"})')[0]["value"][1]) / ranks
        durations = [float(v) for s in query(prometheus, f'scrape_duration_seconds{{job="nanogpt"}}[{int(t1 - t0)}s]')
                     for _, v in s["values"]]  # fmt: skip
        notified = Counter((b["groupLabels"].get("alertname"), b["groupLabels"].get("run_id")) for _, b in webhook.notifications)
        alerts_in = defaultdict(set)
        for _, body in webhook.notifications:
            for a in body["alerts"]:
                alerts_in[(a["labels"]["alertname"], a["labels"]["run_id"])].add(a["labels"]["rank"])
        queries = time_queries(prometheus, f"fleet{ranks}-00-plateau", 3600, scrape, max(scrape, 4), repeats)
        recording_cpu, monitor_cpu = recording1[0] - recording0[0], monitor1[0] - monitor0[0]
        cpu, rss = recording_cpu + monitor_cpu, recording1[1] + monitor1[1]
        return {
            "ranks": ranks, "runs": runs, "ranks_per_run": ranks_per_run, "scrape_s": scrape, "scale": scale,
            "observed_s": t1 - t0, "startup_s": t0 - t_start, "load_avg_1m": [load0, os.getloadavg()[0]],
            "targets": len(groups), "series_per_rank": scraped + per_target + recorded, "scraped_per_rank": scraped,
            "per_target_per_rank": per_target, "recorded_per_rank": recorded,
            "series_total": series_total, "scrape_p99_ms": 1000 * percentile(durations, 99),
            "scrape_p50_ms": 1000 * percentile(durations, 50), "rule_eval_max_s": dict(rule_max),
            "notifications": {f"{a} {r}": n for (a, r), n in notified.items()},
            "ranks_per_notification_group": {f"{a} {r}": len(v) for (a, r), v in alerts_in.items()},
            "exporter_cpu_cores": cpu / (t1 - t0), "exporter_cpu_ms_per_rank_s": 1000 * cpu / (t1 - t0) / ranks,
            "exporter_rss_mib": rss, "exporter_rss_mib_per_rank": rss / ranks,
            "recording_cpu_cores": recording_cpu / (t1 - t0), "recording_rss_mib": recording1[1],
            "monitors": len(monitors), "monitor_cpu_cores": monitor_cpu / (t1 - t0), "monitor_rss_mib": monitor1[1],
            "prometheus_rss_mib": own["process_resident_memory_bytes"][0][1] / 2**20,
            "prometheus_cpu_cores": (own["process_cpu_seconds_total"][0][1] - prometheus_cpu0) / (t1 - t0),
            "rule_eval_p50_s": {k: statistics.median(v) for k, v in per_rule.items()},
            "queries_1h_p95_s": queries,
        }
    finally:
        for process in reversed(started):
            try:
                process.stop(timeout=60)
            except subprocess.TimeoutExpired:
                process.proc.kill()
        for worker in workers:
            worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        webhook.close()


def day(ranks: int, hours: float, step: int, workdir: Path, repeats: int) -> dict:
    """Backfill a day, serve it with the real rules, time every rule and every dashboard query over 24 h and 1 h."""
    data = workdir / "day" / "data"  # the Prometheus below keeps its TSDB there
    data.mkdir(parents=True)
    t0 = end = time.time()
    figures = backfill(data, workdir, ranks, hours, step, end=end)
    figures["backfill_s"] = time.time() - t0
    prometheus = Prometheus(workdir / "day", [], scrape_interval="15s", evaluation_interval="15s",
                            extra_args=("--storage.tsdb.retention.time=30d",))  # fmt: skip
    try:
        settle_compaction(prometheus)
        figures["blocks"] = self_metrics(prometheus)["prometheus_tsdb_blocks_loaded"][0][1]
        # The data ends at `end`, so rules and queries are timed there, not at the (later) present.
        figures["rule_cost_s"] = rule_costs(prometheus, end - step, repeats)
        figures["queries_all_24h_p95_s"] = time_queries(prometheus, ".*", int(hours * 3600), step, step, repeats, end)
        figures["queries_run_24h_p95_s"] = time_queries(prometheus, "fleet-000", int(hours * 3600), step, step,
                                                        repeats, end)  # fmt: skip
        figures["queries_all_1h_p95_s"] = time_queries(prometheus, ".*", 3600, step, step, repeats, end)
    finally:
        prometheus.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="64,256,1024", help="fleet sizes, comma-separated")
    parser.add_argument("--scale", type=int, default=30, help="divide the rules' windows and for: by this")
    parser.add_argument("--scrape-interval", type=int, default=5, help="seconds (the live phase)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each dashboard query (p95 of these)")
    parser.add_argument("--no-day", action="store_true", help="skip the 24 h backfill")
    parser.add_argument("--day-ranks", type=int, default=1024)
    parser.add_argument("--day-hours", type=float, default=24)
    parser.add_argument("--day-step", type=int, default=60, help="backfill resolution, seconds")
    args = parser.parse_args(argv)
    results = {"live": [], "day": None}
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        for ranks in [int(r) for r in args.ranks.split(",")]:
            per_run = min(RANKS_PER_RUN, max(8, ranks // 8))
            print(f"live: {ranks} ranks in {ranks // per_run} runs of {per_run} ...", file=sys.stderr, flush=True)
            try:
                results["live"].append(live(ranks, per_run, args.scale, args.scrape_interval,
                                            Path(tmp) / f"live{ranks}", args.repeats))  # fmt: skip
            except Exception as e:  # the first thing that breaks is a finding: report it, go on
                traceback.print_exc()
                results.setdefault("broke", []).append(f"{ranks} ranks: {e!r}")
            print(json.dumps(results["live"][-1:], default=str), file=sys.stderr, flush=True)
        if not args.no_day:
            print(f"day: {args.day_ranks} ranks x {args.day_hours:g} h ...", file=sys.stderr, flush=True)
            try:
                results["day"] = day(args.day_ranks, args.day_hours, args.day_step, Path(tmp), args.repeats)
            except Exception as e:
                results.setdefault("broke", []).append(f"day: {e!r}")
    from bench.fleet_report import print_report  # noqa: E402

    print_report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
