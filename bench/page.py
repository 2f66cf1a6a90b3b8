"""Benchmark (not a test): the live page in Chromium with a long run's history behind it.

Feeds N logged points through the real exporter API (TrainingMonitor.log) in a process that then
trains (a busy loop holding the GIL, calling iteration() every step) while it serves, opens the
page in Debian's Chromium and prints:

- time to first chart: navigation start -> the first frame drawn with data (median and p95
  of several loads), and how many points the page was shipped for it;
- new point -> redraw: monitor.log() called -> the frame that shows that point drawn
  (SSE push, JSON parse, requestAnimationFrame, draw), and the draw itself;
- JS heap after loading, as performance.memory reports it and after a GC;

--overview skips the browser: History.to_json of the overview the page carries, at 1k, 100k
and 1M appended points (median and spread of 20 calls), and what an append costs there.

--repo PATH times another checkout's exporter with this bench (before/after figures: the
trainer-served exporter before issue 19 shares the trainer's GIL). Target: first chart < 100 ms
with 1M points logged, while training.

    python bench/page.py [--points 1000000] [--updates 50] [--loads 8] [--repo ../old-checkout]
    python bench/page.py --overview [--eval-every 250]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--repo" in sys.argv:  # another checkout's exporter, for before/after figures from one bench
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--repo") + 1]).resolve()))

from exporter import History, Point, TrainingMonitor  # noqa: E402
from exporter.page import CHART_FIELDS, FIRST_OVERVIEW_POINTS  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--enable-precise-memory-info"]  # exact performance.memory, not bucketed
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False)
START = 1_700_000_000.0


def loss_at(i: int) -> float:
    """The bench run's loss at iteration i: decaying, with a little noise."""
    return 1.5 + 2.5 / (1 + i / 2000) + 0.05 * ((i * 7919) % 13 - 6) / 6


def val_at(i: int) -> float:
    """The bench run's val_loss at an eval (its train split's loss is 0.1 lower)."""
    return 1.6 + 2.5 / (1 + i / 2000)


def feed(monitor: TrainingMonitor, points: int) -> None:
    """`points` logged iterations (one a second, a noisy decaying loss), an eval every 250."""
    for i in range(points):
        t = START + i
        if i % 250 == 0:
            monitor.evaluated(iteration=i, train_loss=val_at(i) - 0.1, val_loss=val_at(i))
        monitor.log(iteration=i, loss=loss_at(i), lr=6e-4, step_seconds=0.1, tokens_per_second=7680.0,
                    elapsed_seconds=float(i), timestamp=t)


def logged(i: int, eval_every: int = 250) -> Point:
    """The point feed() makes the monitor log at iteration i, its eval merged in."""
    val = val_at(i) if i % eval_every == 0 else None
    return Point(i, loss_at(i), lr=6e-4, step_seconds=0.1, tokens_per_second=7680.0, elapsed_seconds=float(i),
                 timestamp=START + i, val_loss=val, eval_train_loss=None if val is None else val - 0.1)


def overview_figures(counts=(1_000, 100_000, 1_000_000), calls: int = 20, more: int = 20_000,
                     eval_every: int = 250) -> None:
    """Print what History.to_json of the page's first overview costs at each count of appended
    points (median and spread of `calls`), and what the next `more` appends cost there (their
    JSON made beforehand, as TrainingMonitor.log's caller has it)."""
    for count in counts:
        history = History()
        started = time.perf_counter()
        for i in range(count):
            history.append(logged(i, eval_every))
        fed, held = time.perf_counter() - started, len(history)
        times = []
        for _ in range(calls + 1):  # the first call imports numpy: not counted
            started = time.perf_counter()
            body = history.to_json("bench-page", 0, layout="columns", names=CHART_FIELDS, points=FIRST_OVERVIEW_POINTS)
            times.append((time.perf_counter() - started) * 1000)
        times = sorted(times[1:])
        points = [logged(i, eval_every) for i in range(count, count + more)]
        for point in points:
            point.json
        started = time.perf_counter()
        for point in points:
            history.append(point)
        append_us = (time.perf_counter() - started) / more * 1e6
        print(f"{count:>9,} appended ({fed:.1f} s, {held:,} held): overview median "
              f"{statistics.median(times):.2f} ms, p10..p90 {times[len(times) // 10]:.2f}.."
              f"{times[-1 - len(times) // 10]:.2f}, range {times[0]:.2f}..{times[-1]:.2f} ms, "
              f"{len(body) / 1000:.0f} kB; the next {more:,} appends {append_us:.1f} us each")


def first_chart_ms(browser, url: str) -> tuple[float, float, float, int]:
    """(navigation start -> the first frame with data, of it the page request -> first byte, of it
    the page's own work after the last byte, in ms (performance.now() starts at navigation); the
    points the page holds then). The page carries the overview of its first chart in its HTML."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_function("() => window.__nanogpt && __nanogpt.firstDrawAt() !== null", timeout=120_000)
    timing = page.evaluate("""() => {
        const d = performance.getEntriesByType("navigation")[0];
        return [__nanogpt.firstDrawAt(), d.responseStart - d.requestStart, __nanogpt.firstDrawAt() - d.responseEnd,
                __nanogpt.points()];
    }""")
    page.close()
    return tuple(timing)




def train_and_serve(points: int, pipe) -> None:
    """In its own process, as a trainer: log `points` points, serve, then train (a busy loop calling
    iteration() every ~5 ms of pure-Python work, one core) while the pages load; log each
    iteration the pipe brings at once (None ends it). Uses only the API every version of the
    exporter has (TrainingMonitor(run_id, rank), serve(), iteration(), log()), so `--repo` can
    time an older checkout with the same bench."""
    monitor = TrainingMonitor(run_id="bench-page", rank=0)
    monitor.run_started(max_iterations=points * 2, tokens_per_iteration=768, model_config=MODEL,
                        parameters={"total": 800_000}, dataset="bench", device="cpu", dtype="float32",
                        start_time=START)
    started = time.perf_counter()
    feed(monitor, points)
    print(f"fed {points:,} points through TrainingMonitor.log in {time.perf_counter() - started:.1f} s", flush=True)
    server = monitor.serve(host="127.0.0.1", port=0)
    caught_up(server.url, points - 1)
    pipe.send(server.url)
    step = points
    while True:
        sum(i * i for i in range(20_000))  # ~5 ms of a training step that holds the GIL
        monitor.iteration(iteration=step, tokens=768)
        step += 1
        if pipe.poll():
            if (iteration := pipe.recv()) is None:
                break
            monitor.log(iteration=iteration, loss=1.6, lr=6e-4, step_seconds=0.1, tokens_per_second=7680.0,
                        timestamp=START + iteration)
    server.close()
    monitor.close()


def caught_up(url: str, iteration: int, timeout: float = 600.0) -> None:
    """Wait until the server holds the point at `iteration` (a monitor process replays the journal first)."""
    import json
    import urllib.request

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        with urllib.request.urlopen(f"{url}/api/history?since={iteration - 1}", timeout=60) as answer:
            if json.loads(answer.read())["points"]:
                print(f"served from {url} after {time.perf_counter() - started:.1f} s", flush=True)
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not hold iteration {iteration} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="logged points")
    parser.add_argument("--repo", type=Path, default=None, help="time this checkout's exporter (default: this one)")
    parser.add_argument("--updates", type=int, default=50, help="live points timed for redraw latency")
    parser.add_argument("--loads", type=int, default=8, help="page loads timed for the first chart")
    parser.add_argument("--overview", action="store_true", help="only History.to_json of the first overview")
    parser.add_argument("--eval-every", type=int, default=250, help="with --overview: iterations between evals")
    args = parser.parse_args()
    if args.overview:
        overview_figures(eval_every=args.eval_every)
        return
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("bench/page.py: chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    parent, child = multiprocessing.Pipe()
    # the exporter in a process of its own, as in a trainer: Playwright's client here would otherwise
    # compete with the server for this process's GIL and slow its answers down
    server = multiprocessing.Process(target=train_and_serve, args=(args.points, child))
    server.start()
    url = parent.recv()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            loads = []
            for _ in range(args.loads):
                time.sleep(1.0)  # as a person opens a page, one after another
                loads.append(first_chart_ms(browser, url + "/"))

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("() => window.__nanogpt && __nanogpt.draws() > 0", timeout=120_000)
            held = page.evaluate("() => __nanogpt.points()")
            heap_before_gc = page.evaluate("() => performance.memory.usedJSHeapSize")
            cdp = page.context.new_cdp_session(page)
            cdp.send("HeapProfiler.collectGarbage")
            heap_after_gc = cdp.send("Runtime.getHeapUsage")["usedSize"]

            latencies, draws = [], []
            for k in range(args.updates):
                iteration = args.points + k
                sent = time.time() * 1000
                parent.send(iteration)  # the server process logs it at once
                page.wait_for_function(
                    f"() => (__nanogpt.lastRedraw() || {{}}).iteration === {iteration}", polling=5)
                redraw = page.evaluate("() => __nanogpt.lastRedraw()")
                latencies.append(redraw["drawnAt"] - sent)
                draws.append(page.evaluate("() => __nanogpt.lastDrawMs()"))
            browser.close()
    finally:
        parent.send(None)
        server.join(30)

    def figures(values):
        ordered = sorted(values)
        return (f"median {statistics.median(ordered):.1f} ms, p95 {ordered[int(0.95 * (len(ordered) - 1))]:.1f} ms, "
                f"range {ordered[0]:.1f}..{ordered[-1]:.1f}")

    print(f"page holds {held:,} points ({args.points:,} fed, while a trainer trains)")
    print(f"time to first chart ({args.loads} loads):   {figures([t for t, _, _, _ in loads])}   target 100 ms")
    print(f"  of which the server's page:         {figures([s for _, s, _, _ in loads])} to first byte")
    print(f"  of which the page's parse + draw:   {figures([p for _, _, p, _ in loads])} after the last byte")
    print(f"  points shipped for the first chart: {loads[0][3]:,}")
    print(f"new point -> redraw ({args.updates} points):   {figures(latencies)}")
    print(f"  of which the draw itself:          {figures(draws)}")
    print(f"JS heap after loading:              {heap_before_gc / 2**20:.1f} MB (performance.memory), "
          f"{heap_after_gc / 2**20:.1f} MB after GC (CDP Runtime.getHeapUsage)")


if __name__ == "__main__":
    main()
