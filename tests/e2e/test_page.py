"""The live page (GET /) in a real Chromium: figures without JavaScript, the chart live during a
real training, tooltip, CSV and PNG export, the model's module tree, a phone-sized layout, and
reconnection after the trainer restarts. No console errors anywhere.

Tests that need no training drive a real in-process TrainingMonitor and its real server (the
same code the trainer runs); the live and restart tests run the real trainer.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import signal
import struct
from pathlib import Path

import pytest

from exporter import TrainingMonitor
from exporter.diagram import render as diagram_svg
from exporter.page import page_values
from nanogpt.model import GPT, GPTConfig
from nanogpt_monitor.model_view import describe
from tests.support.procs import FAULTY_TRAINER, Trainer, http_json, require, wait_until

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test command installs it; see README
    sync_playwright = None

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
TREE = describe(GPT(GPTConfig(**MODEL)))
PARAMETERS = {"total": 27_840, "token_embedding": 2_080, "position_embedding": 1_024, "attention": 8_448,
              "mlp": 16_704, "layernorm": 256, "lm_head": 0}
# The network errors Chromium logs while the trainer is down between two runs: expected, nothing else is.
REFUSED = "Failed to load resource: net::ERR_CONNECTION_REFUSED"


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        message = "playwright is not installed (pip install -e '.[test]')"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    chromium = require("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """Every console error and uncaught exception of a page, with the ones expected right now."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.trainer_down = False  # while True, refused connections are what the page should see
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message) -> None:
        if message.type == "error" and not (self.trainer_down and message.text == REFUSED):
            self.errors.append(f"{message.text} ({message.location.get('url')})")


@pytest.fixture
def page_factory(browser):
    """new_page(**context options) -> (page, console); asserts no console errors at the end."""
    opened = []

    def new_page(**options):
        context = browser.new_context(accept_downloads=True, **options)
        page = context.new_page()
        console = Console(page)
        opened.append((context, console))
        return page, console

    yield new_page
    for context, console in opened:
        context.close()  # before the server closes, so open event streams end first
        assert console.errors == [], "console errors on the page"


RUN = dict(max_iterations=1000, tokens_per_iteration=256, model_config=MODEL, parameters=PARAMETERS, model_tree=TREE,
           dataset="tinyshakespeare.txt", device="cpu", dtype="float32", start_time=1_700_000_000.0)


@pytest.fixture
def monitor(tmp_path):
    monitor = TrainingMonitor(run_id="page-test", rank=0, directory=tmp_path / "run")
    monitor.run_started(**RUN)
    return monitor


@pytest.fixture
def server(monitor):
    server = monitor.serve(host="127.0.0.1", port=0)
    yield server
    server.close()


def feed(monitor, iterations, start=0, every=10):
    """Logged points `every` iterations, one simulated second apart, an eval each 50 iterations."""
    for i in range(start, start + iterations, every):
        t = 1_700_000_000.0 + i
        monitor.iteration(iteration=i, tokens=256, timestamp=t)
        if i % 50 == 0:
            monitor.evaluated(iteration=i, train_loss=3.0 - i / 1000, val_loss=3.1 - i / 1000,
                              best_val_loss=3.1 - i / 1000, eval_seconds=0.1, timestamp=t)
        monitor.log(iteration=i, loss=3.0 - i / 500 + 0.05 * ((i // every) % 2), lr=6e-4, step_seconds=0.1,
                    tokens_per_second=2560.0, mfu=0.123, elapsed_seconds=float(i), timestamp=t)


def hook(page, expression: str):
    """Evaluate an expression over the page's read-only test hook, window.__nanogpt."""
    return page.evaluate(f"() => window.__nanogpt && window.__nanogpt.{expression}")


def open_page(page, url: str, points: int):
    page.goto(url + "/")
    page.wait_for_function(f"() => window.__nanogpt && __nanogpt.points() >= {points} && __nanogpt.draws() > 0")


def test_figures_are_in_the_html_with_javascript_off(monitor, server, page_factory):
    feed(monitor, 300)
    monitor.evaluated(iteration=290, train_loss=2.5, val_loss=2.625, best_val_loss=2.6)
    page, _ = page_factory(java_script_enabled=False)
    page.goto(server.url + "/")
    figure = lambda name: page.get_by_test_id(f"fig-{name}").inner_text()  # noqa: E731
    assert figure("iteration") == "290 / 1,000"
    assert figure("loss") == f"{3.0 - 290 / 500 + 0.05:.4f}"
    assert figure("val_loss") == "2.6250"
    assert figure("rate") == "1.00 it/s"  # 10 iterations per simulated 10 s
    assert figure("eta") == "11m 50s"  # 710 iterations left at 1 it/s
    assert figure("parameters") == "27,840"
    assert figure("state") == "running"
    assert figure("best_val_loss") == "2.6000"
    assert figure("mfu") == "12.3 %"
    assert page.get_by_test_id("chart").is_hidden()  # the chart needs JavaScript; the figures do not


def test_goodput_and_the_last_spikes_read_the_same_with_javascript_and_follow_the_run(page_factory, tmp_path):
    monitor = TrainingMonitor(run_id="page-test", rank=0, directory=tmp_path / "run", spike_window=16,
                              startup_since=RUN["start_time"] - 20)
    monitor.run_started(**RUN)
    server = monitor.serve(host="127.0.0.1", port=0)

    def advance(start, stop, loss=None, grad_norm=None):
        """An iteration a simulated second, a quarter of it waiting for data, each logged."""
        for i in range(start, stop):
            t, wobble = RUN["start_time"] + i, 0.01 * (-1) ** i
            monitor.iteration(iteration=i, tokens=256, timestamp=t, data_seconds=0.25)
            monitor.log(iteration=i, loss=loss or 2.0 + wobble, lr=6e-4, grad_norm=grad_norm or 1.0 + wobble,
                        timestamp=t)

    def served() -> dict[str, str]:
        """The figures as exporter/page.py writes them for the current /api/status."""
        values = page_values(http_json(server.url + "/api/status"), {})
        return {"fig-goodput": f"{values['fig_goodput']} {values['fig_goodput_rest']}",
                "fig-loss_spike": values["fig_loss_spike"], "fig-grad_norm_spike": values["fig_grad_norm_spike"]}

    try:
        advance(0, 40)  # 20 s of startup, then 39 s: 29.25 s of steps, 9.75 s of data wait
        static, _ = page_factory(java_script_enabled=False)
        static.goto(server.url + "/")
        before = {testid: static.get_by_test_id(testid).inner_text() for testid in served()}
        assert before == served() == {"fig-goodput": "49.6 % \u00b7 startup 33.9 %", "fig-loss_spike": "\u2013",
                                      "fig-grad_norm_spike": "\u2013"}
        page, _ = page_factory()
        page.goto(server.url + "/")
        expect(page.get_by_test_id("connection")).to_have_text("live")
        for testid, text in before.items():
            expect(page.get_by_test_id(testid)).to_have_text(text)  # the script's formatting is the server's
        advance(40, 41, loss=3.0, grad_norm=5.0)  # both spike, and the clock goes on
        after = served()
        assert after["fig-loss_spike"].startswith("it 40 (") and after["fig-grad_norm_spike"].startswith("it 40 (")
        for testid, text in after.items():
            expect(page.get_by_test_id(testid)).to_have_text(text)  # live, without a reload
        page.context.close()  # before the server goes: its going is not what this test is about
    finally:
        server.close()


def test_page_sends_a_content_security_policy_its_own_code_obeys(monitor, server, page_factory):
    feed(monitor, 100)
    page, _ = page_factory()
    response = page.goto(server.url + "/")
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    page.wait_for_function("() => window.__nanogpt && __nanogpt.draws() > 0")  # the script ran under the CSP


def test_tooltip_shows_the_values_of_the_point_under_the_pointer(monitor, server, page_factory):
    feed(monitor, 200)
    page, _ = page_factory(viewport={"width": 1000, "height": 900})
    open_page(page, server.url, 20)
    history = http_json(server.url + "/api/history")["points"]
    index = 7
    position = hook(page, f"pointPosition({index})")
    box = page.get_by_test_id("chart").bounding_box()
    page.mouse.move(box["x"] + position["x"], box["y"] + position["y"])
    tooltip = page.get_by_test_id("tooltip")
    point = history[index]
    assert tooltip.locator("[data-key=iteration]").inner_text() == f"iteration: {point['iteration']}"
    assert tooltip.locator("[data-key=loss]").inner_text() == f"loss: {point['loss']:.4f}"
    shown_time = page.evaluate(f"() => new Date({point['timestamp']} * 1000).toLocaleTimeString()")
    assert tooltip.locator("[data-key=time]").inner_text() == f"time: {shown_time}"


def test_drag_zooms_into_a_range_and_reset_shows_everything(monitor, server, page_factory):
    feed(monitor, 500)
    page, _ = page_factory(viewport={"width": 1000, "height": 900})
    open_page(page, server.url, 50)
    box = page.get_by_test_id("chart").bounding_box()
    start, end = hook(page, "pointPosition(10)"), hook(page, "pointPosition(20)")
    page.mouse.move(box["x"] + start["x"], box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + end["x"], box["y"] + 100, steps=5)
    page.mouse.up()
    page.wait_for_function("() => __nanogpt.view().x1 < 300")
    x0, x1 = hook(page, "view().x0"), hook(page, "view().x1")
    assert 95 <= x0 <= 105 and 195 <= x1 <= 205  # iterations 100..200, to within a pixel
    page.get_by_test_id("zoom-reset").click()
    page.wait_for_function("() => __nanogpt.view().x1 === 490")
    assert hook(page, "view().x0") == 0


def test_the_first_chart_is_drawn_from_the_page_itself_without_asking_for_the_history(monitor, server, page_factory):
    feed(monitor, 3_000)
    page, _ = page_factory()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    open_page(page, server.url, 300)
    page.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'")
    assert hook(page, "points()") == 300 and hook(page, "evals()") == 60
    assert not [url for url in requested if "/api/history" in url]


def test_a_long_history_opens_as_an_overview_and_a_zoom_loads_its_range_in_full(monitor, server, page_factory):
    feed(monitor, 30_000)  # 3,000 logged points: more than two per pixel column of this chart
    monitor.log(iteration=30_000, loss=9.0, timestamp=1_700_030_000.0)  # a spike the overview must keep
    feed(monitor, 30_000, start=30_010)
    page, _ = page_factory(viewport={"width": 800, "height": 900})
    open_page(page, server.url, 1)
    held = hook(page, "iterations()")
    assert len(held) < 3_000 and held[0] == 0 and held[-1] == 60_000  # an overview of 6,001, its ends exact
    assert 30_000 in held and max(hook(page, "losses()")) == 9.0
    assert hook(page, "evals()") == 1_200  # every eval, though the loss was thinned

    box = page.get_by_test_id("chart").bounding_box()
    x0, x1 = hook(page, "view().x0"), hook(page, "view().x1")
    x_of = lambda it: box["x"] + 52 + (it - x0) / (x1 - x0) * (box["width"] - 64)  # noqa: E731 (PAD in index.html)
    page.mouse.move(x_of(29_000), box["y"] + 100)
    page.mouse.down()
    page.mouse.move(x_of(31_000), box["y"] + 100, steps=5)
    page.mouse.up()
    page.wait_for_function("() => __nanogpt.view().x1 < 40000")
    lo, hi = math.ceil(hook(page, "view().x0")), math.floor(hook(page, "view().x1"))
    served = [p["iteration"] for p in http_json(f"{server.url}/api/history?since={lo - 1}&until={hi}")["points"]]
    assert len(served) > 150
    in_range = lambda: [it for it in hook(page, "iterations()") if lo <= it <= hi]  # noqa: E731
    wait_until(lambda: in_range() == served, timeout=10, what="every logged point of the zoomed range")
    page.get_by_test_id("zoom-reset").click()
    page.wait_for_function("() => __nanogpt.view().x1 === 60000")


def test_csv_download_matches_the_history(monitor, server, page_factory):
    feed(monitor, 300)
    page, _ = page_factory()
    open_page(page, server.url, 30)
    with page.expect_download() as download_info:
        page.get_by_test_id("download-csv").click()
    download = download_info.value
    assert download.suggested_filename == "nanogpt-page-test.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    history = http_json(server.url + "/api/history")["points"]
    assert [int(r["iteration"]) for r in rows] == [p["iteration"] for p in history]
    assert [float(r["loss"]) for r in rows] == [p["loss"] for p in history]
    assert [r["val_loss"] for r in rows] == ["" if p["val_loss"] is None else str(p["val_loss"]) for p in history]


def test_png_download_is_a_png_of_the_chart(monitor, server, page_factory):
    feed(monitor, 300)
    page, _ = page_factory(viewport={"width": 900, "height": 800}, device_scale_factor=1)
    open_page(page, server.url, 30)
    with page.expect_download() as download_info:
        page.get_by_test_id("download-png").click()
    data = Path(download_info.value.path()).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    canvas = page.get_by_test_id("chart")
    assert (width, height) == (canvas.evaluate("c => c.width"), canvas.evaluate("c => c.height"))
    assert width > 300 and height > 200


def test_the_module_tree_opens_and_closes_from_the_keyboard(monitor, server, page_factory):
    page, _ = page_factory()
    page.goto(server.url + "/")
    block = page.get_by_test_id("module-transformer-h-1")
    attention = page.get_by_test_id("module-transformer-h-1-attn")
    expect(attention).to_be_hidden()  # blocks after the first start closed
    summary = block.locator("summary").first
    page.get_by_test_id("module-transformer-h-0").locator("summary").first.focus()
    for _ in range(10):  # Tab through block 0's rows to the next block's
        page.keyboard.press("Tab")
        if summary.evaluate("el => el === document.activeElement"):
            break
    expect(summary).to_be_focused()
    page.keyboard.press("Enter")
    expect(attention).to_be_visible()
    expect(attention).to_contain_text("2 heads \u00d7 16")
    page.keyboard.press("Enter")
    expect(attention).to_be_hidden()


def test_tabbing_to_a_part_of_the_diagram_shows_its_details_without_script(monitor, server, page_factory):
    page, _ = page_factory(java_script_enabled=False, viewport={"width": 360, "height": 740})
    page.goto(server.url + "/")
    diagram = page.get_by_test_id("model-diagram")
    hint = diagram.locator("text.hint")
    attention = diagram.locator('[data-part="transformer.h.0.attn"]')
    details = attention.locator(":scope > g.detail")
    expect(hint).to_be_visible()
    expect(details).to_be_hidden()
    parts = diagram.locator(".part-group")
    assert parts.count() == diagram_svg(TREE).count('class="part-group"') > 4  # one per drawn part
    for name in parts.evaluate_all("gs => gs.map(g => g.getAttribute('aria-label'))"):
        assert "parameters" in name  # each has an accessible name that says its count
    page.locator('[data-part="transformer.h.0"]').focus()
    for _ in range(6):  # Tab from the block into its parts, as a keyboard user would
        page.keyboard.press("Tab")
        if attention.evaluate("el => el === document.activeElement"):
            break
    expect(attention).to_be_focused()
    expect(details).to_be_visible()
    expect(details).to_contain_text("transformer.h.0.attn (CausalSelfAttention)")
    expect(details).to_contain_text("2 heads × 16")
    expect(hint).to_be_hidden()
    box = diagram.bounding_box()
    assert box is not None and box["width"] <= 360


def test_a_new_sample_shows_without_a_reload_and_its_text_stays_text(monitor, server, page_factory):
    monitor.sample(0, "first words")
    page, _ = page_factory()
    page.goto(server.url + "/")
    expect(page.get_by_test_id("connection")).to_have_text("live")  # following the stream
    samples = page.get_by_test_id("samples")
    expect(samples.locator("figure.sample").first).to_contain_text("first words")
    monitor.sample(250, "<b>bold?</b>\nsecond line")
    newest = samples.locator("figure.sample").first
    expect(newest).to_contain_text("iteration 250")
    expect(newest.locator("pre")).to_have_text("<b>bold?</b>\nsecond line")
    assert samples.locator("b").count() == 0  # the model's text is never markup
    expect(page.get_by_test_id("older-samples")).to_contain_text("1 older")


def test_a_page_served_before_the_run_started_gets_the_tree(page_factory, tmp_path):
    monitor = TrainingMonitor(run_id="page-test", rank=0, directory=tmp_path / "run")
    server = monitor.serve(host="127.0.0.1", port=0)
    try:
        page, _ = page_factory()
        # the model arrives after the HTML was served without it: when the page, which carried an
        # empty history, asks for the backlog as its stream opens, while it also asks for the model
        page.route("**/api/history*", lambda route: (monitor.run_started(**RUN), route.continue_()))
        page.goto(server.url + "/")
        expect(page.get_by_test_id("module-transformer-h-0-attn")).to_contain_text("2 heads")
        expect(page.get_by_test_id("model-summary")).to_contain_text("GPT \u00b7 2 layers")
        page.context.close()
    finally:
        server.close()


def test_a_page_opened_long_before_the_run_started_gets_the_tree_when_it_starts(page_factory, tmp_path):
    monitor = TrainingMonitor(run_id="page-test", rank=0, directory=tmp_path / "run")
    server = monitor.serve(host="127.0.0.1", port=0)
    try:
        page, _ = page_factory()
        page.goto(server.url + "/")
        expect(page.get_by_test_id("connection")).to_have_text("live")  # history, status and stream: no model yet
        expect(page.get_by_test_id("module-root")).to_have_count(0)
        monitor.run_started(**RUN)  # a trainer building its model and data for a while, then starting
        expect(page.get_by_test_id("module-transformer-h-0-attn")).to_contain_text("2 heads")
        page.context.close()
    finally:
        server.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_width_has_no_horizontal_overflow(monitor, server, page_factory, scheme):
    feed(monitor, 300)
    page, _ = page_factory(viewport={"width": 375, "height": 667}, color_scheme=scheme)
    open_page(page, server.url, 30)
    page.wait_for_selector("[data-testid=module-root]")
    scroll, client = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll <= client == 375


def test_chart_and_analytics_update_live_during_a_real_training(page_factory, tmp_path):
    # iteration 204 alone at 1000x the lr (tests.support.faulty_train), so the loss logged at 205 spikes;
    # the lr's warm-up is over by 10, so 32 logged points (the spike window's warm-up) are in by 170
    trainer = Trainer(tmp_path, "--max_iters=20000", "--log_interval=5", "--eval_interval=50", "--eval_iters=2",
                      "--warmup_iters=10", "--lr_burst_at=204", command=FAULTY_TRAINER)
    try:
        page, _ = page_factory()
        page.goto(trainer.base_url + "/")
        page.wait_for_function("() => window.__nanogpt && __nanogpt.points() > 0 && __nanogpt.draws() > 0",
                               timeout=60_000)
        first_draws, first_last = hook(page, "draws()"), hook(page, "lastIteration()")
        page.wait_for_function(f"() => __nanogpt.lastIteration() >= {first_last + 20}", timeout=60_000)
        assert hook(page, "draws()") > first_draws
        expect(page.get_by_test_id("connection")).to_have_text("live")
        assert page.get_by_test_id("fig-loss").inner_text() != "\u2013"
        shown = hook(page, "iterations()")
        served = [p["iteration"] for p in http_json(trainer.base_url + "/api/history")["points"]]
        assert shown == served[: len(shown)]  # every logged point, in order, none twice
        expect(page.get_by_test_id("fig-goodput")).to_have_text(re.compile(r"^\d+\.\d % \u00b7 [a-z ]+ \d+\.\d %$"))
        spike = page.get_by_test_id("fig-loss_spike")
        expect(spike).to_have_text(re.compile(r"^it [\d,]+ \(\d+\.\d\u03c3\)$"), timeout=120_000)
        spiked = http_json(trainer.base_url + "/api/status")["last_loss_spike"]["iteration"]
        assert spiked >= 205 and spike.inner_text().startswith(f"it {spiked:,} (")  # logged after the burst
        page.context.close()  # before the trainer goes: its going is not what this test is about
    finally:
        trainer.stop()


def test_a_killed_trainer_shows_failed_and_the_page_follows_its_resumed_run(page_factory, tmp_path):
    args = ["--max_iters=2000", "--log_interval=5", "--eval_interval=20", "--eval_iters=2", "--run-id=restart"]
    trainer = Trainer(tmp_path, *args)
    try:
        page, console = page_factory()
        page.goto(trainer.base_url + "/")
        wait_until(lambda: (tmp_path / "out" / "ckpt.pt").exists(), timeout=60, what="a first checkpoint")
        # past a checkpoint (every 20 iterations), so the resumed run goes back and logs anew
        page.wait_for_function("() => window.__nanogpt && __nanogpt.lastIteration() >= 25 "
                               "&& __nanogpt.lastIteration() % 20 !== 0", timeout=60_000)
        before = hook(page, "lastIteration()")
        console.trainer_down = True
        trainer.signal(signal.SIGKILL)  # a crash: no goodbye to the page, but its monitor sees it go
        trainer.wait()
        expect(page.get_by_test_id("fig-state")).to_have_text("failed")
        trainer = Trainer(tmp_path, *args, "--resume", f"--metrics-port={trainer.port}")
        page.wait_for_function(f"() => __nanogpt.lastIteration() > {before + 10}", timeout=60_000)
        expect(page.get_by_test_id("connection")).to_have_text("live")
        console.trainer_down = False
        shown = hook(page, "iterations()")
        assert shown == sorted(set(shown))  # no duplicates, in order
        served = http_json(trainer.base_url + "/api/history")["points"]
        # no gaps and nothing stale: exactly the restarted trainer's history, values included
        assert list(zip(shown, hook(page, "losses()"))) == [(p["iteration"], p["loss"]) for p in served][: len(shown)]
        page.context.close()
    finally:
        trainer.stop()


@pytest.mark.parametrize("ending", ["finished", "failed"])
def test_a_run_that_ended_shows_how_it_ended_not_reconnecting_when_its_server_goes(monitor, server, page_factory,
                                                                                  ending):
    page, console = page_factory()
    feed(monitor, 100)
    page.goto(server.url + "/")
    expect(page.get_by_test_id("connection")).to_have_text("live")
    monitor.run_ended(iteration=90, state=ending, reason="" if ending == "finished" else "out of memory")
    expect(page.get_by_test_id("fig-state")).to_have_text(ending)  # pushed over the stream
    console.trainer_down = True
    server.close()  # Ctrl-C after the linger: the stream ends, the server is gone
    expect(page.get_by_test_id("connection")).to_have_text(ending)
    # the page keeps asking quietly (a resumed run on the same port would be picked up), yet never
    # says it is reconnecting: the run is over
    page.wait_for_timeout(3000)
    for testid in ("connection", "fig-state"):
        expect(page.get_by_test_id(testid)).to_have_text(ending)
        expect(page.get_by_test_id(testid)).to_have_attribute("data-state", ending)
    page.context.close()
