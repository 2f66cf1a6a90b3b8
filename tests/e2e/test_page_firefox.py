"""The live page in Debian's firefox-esr: the checks of test_page.py that a second engine can
disagree on (the chart drawing live, the server-rendered module tree opened from the keyboard, the
phone layout, a clean console under the CSP), during a real training.

Playwright drives only its own patched Firefox, so tests/firefox/page_check.mjs drives the stock
one with puppeteer-core over WebDriver BiDi and prints what it saw as JSON; the asserts are here.
One browser run serves every test of this module.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from exporter.diagram import render as diagram_svg
from tests.support.procs import REPO, Process, Trainer, http_json, require, wait_until

pytestmark = pytest.mark.slow

CHECK = REPO / "tests" / "firefox" / "page_check.mjs"
PUPPETEER = REPO / "tests" / "firefox" / "node_modules" / "puppeteer-core"


def require_puppeteer() -> None:
    if not PUPPETEER.is_dir():
        message = "puppeteer-core is not installed (npm ci --prefix tests/firefox; scripts/test.sh does it)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(scope="module")
def firefox(tmp_path_factory):
    """What page_check.mjs saw in Firefox on a training trainer's page, with what the trainer served."""
    firefox_esr, node = require("firefox-esr"), require("node")
    require_puppeteer()
    workdir = tmp_path_factory.mktemp("firefox")
    profile = workdir / "profile"  # Firefox's profile and HOME: removed with the temp dir
    profile.mkdir()
    trainer = Trainer(workdir, "--max_iters=20000", "--log_interval=5", "--eval_interval=50", "--eval_iters=2")
    check = None
    try:
        check = Process([node, str(CHECK), trainer.base_url, str(profile), firefox_esr], workdir / "firefox.log",
                        env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}, cwd=REPO)
        rc = check.wait(timeout=240)
        results = [line for line in check.lines if line.startswith("{")]
        assert results, f"page_check.mjs printed no result (exit {rc}):\n{check.output()[-3000:]}"
        seen = json.loads(results[-1])
        assert rc == 0 and "error" not in seen, f"page_check.mjs failed (exit {rc}): {seen.get('error')}"
        served = {"history": http_json(trainer.base_url + "/api/history")["points"],
                  "model": http_json(trainer.base_url + "/api/model")}
        yield seen, served
    finally:
        if check:
            check.stop()  # SIGTERM: puppeteer kills its Firefox on the way out
        trainer.stop()


def test_it_is_firefox(firefox):
    seen, _ = firefox
    assert seen["browser"].startswith("firefox/")


def test_chart_draws_and_updates_live_in_firefox(firefox):
    seen, served = firefox
    chart = seen["chart"]
    assert chart["firstDraws"] > 0 and chart["draws"] > chart["firstDraws"]
    assert chart["last"] >= chart["firstLast"] + 20
    assert chart["connection"] == "live"
    assert chart["figLoss"] != "\u2013"
    assert re.fullmatch(r"\d+\.\d % \u00b7 [a-z ]+ \d+\.\d %", chart["figGoodput"])
    shown = chart["iterations"]
    assert shown == [p["iteration"] for p in served["history"]][: len(shown)]  # every point, in order, none twice
    assert chart["ink"] > 0.01 * chart["canvas"]["width"] * chart["canvas"]["height"]  # pixels really drawn


def test_the_diagram_has_a_named_tab_stop_per_part_whose_focus_shows_its_counts(firefox):
    seen, served = firefox
    diagram = seen["diagram"]
    drawn = diagram_svg(served["model"]["tree"])
    assert len(diagram["parts"]) == drawn.count('class="part-group"') > 4
    assert all(p["tabindex"] == "0" and "parameters" in p["label"] for p in diagram["parts"])
    focused = diagram["focused"]
    assert focused["hiddenAtFirst"] and focused["shown"] and focused["hintHidden"]
    assert focused["part"] + " (CausalSelfAttention)" in focused["detail"] and "heads" in focused["detail"]
    assert "parameters" in focused["detail"]
    assert 0 < diagram["width360"] <= 360


def modules(node: dict) -> list[dict]:
    """A served module tree, depth first, as the page lists its rows."""
    return [node] + [m for child in node.get("children") or [] for m in modules(child)]


def row_id(node: dict) -> str:
    """The data-testid of a module's row on the page (exporter/page.py names them so)."""
    return "module-" + (node["name"].replace(".", "-") if node.get("name") else "root")


def test_module_tree_renders_from_the_server_in_firefox(firefox):
    seen, served = firefox
    tree, config = seen["tree"], served["model"]["model_config"]
    served_modules = modules(served["model"]["tree"])
    rows = {row["testid"]: row for row in tree["rows"]}
    assert list(rows) == [row_id(m) for m in served_modules]  # a row per module, in order
    blocks = [m for m in served_modules if m["kind"] == "block"]
    assert len(blocks) == config["n_layer"]
    for block in blocks:
        assert f"{block['parameters']:,} params" in rows[row_id(block)]["label"]
    attention = [m for m in served_modules if m["kind"] == "attention"]
    assert len(attention) == config["n_layer"]
    for attn in attention:
        assert attn["heads"] == config["n_head"]
        assert f"{attn['heads']} heads \u00d7 {attn['head_size']}" in rows[row_id(attn)]["label"]
    assert tree["summary"].startswith(f"{served['model']['tree']['type']} \u00b7 {config['n_layer']} layers")


def test_a_block_opens_and_closes_from_the_keyboard_in_firefox(firefox):
    seen, served = firefox
    keyboard = seen["tree"]["keyboard"]
    assert keyboard, "the page shows fewer than two blocks"
    second = [m for m in modules(served["model"]["tree"]) if m["kind"] == "block"][1]
    attention = next(c for c in second["children"] if c["kind"] == "attention")
    assert keyboard["block"] == row_id(second)
    assert keyboard["closedAtFirst"]  # blocks after the first start closed
    assert keyboard["focused"], f"Tab never reached {row_id(second)}'s summary in {keyboard['tabs']} presses"
    assert keyboard["opened"] and f"{attention['heads']} heads \u00d7 {attention['head_size']}" in keyboard["openedText"]
    assert keyboard["closedAgain"]


def test_phone_width_has_no_horizontal_overflow_in_firefox(firefox):
    phone = firefox[0]["phone"]
    # Firefox headless keeps a classic scrollbar, so the page is a little narrower than 375 px
    assert phone["scrollWidth"] <= phone["clientWidth"] <= 375


def test_no_console_errors_or_csp_violations_in_firefox(firefox):
    seen, _ = firefox
    assert seen["consoleErrors"] == []
    assert seen["cspViolations"] == []
