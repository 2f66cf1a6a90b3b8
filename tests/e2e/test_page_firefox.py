"""The live page in Debian's firefox-esr: the checks of test_page.py that a second engine can
disagree on (the chart drawing live, the SVG model diagram, the phone layout, a clean console
under the CSP), during a real training.

Playwright drives only its own patched Firefox, so tests/firefox/page_check.mjs drives the stock
one with puppeteer-core over WebDriver BiDi and prints what it saw as JSON; the asserts are here.
One browser run serves every test of this module.
"""

from __future__ import annotations

import json
import os

import pytest

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
        # A page opened before the trainer has described its model draws no diagram (it does not ask again).
        wait_until(lambda: http_json(trainer.base_url + "/api/model")["layers"], timeout=60, what="the model")
        check = Process([node, str(CHECK), trainer.base_url, str(profile), firefox_esr], workdir / "firefox.log",
                        env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"}, cwd=REPO)
        rc = check.wait(timeout=240)
        results = [line for line in check.lines if line.startswith("{")]
        assert results, f"page_check.mjs printed no result (exit {rc}):\n{check.output()[-3000:]}"
        seen = json.loads(results[-1])
        assert rc == 0 and "error" not in seen, f"page_check.mjs failed (exit {rc}): {seen.get('error')}"
        served = {"history": http_json(trainer.base_url + "/api/history")["points"],
                  "model": http_json(trainer.base_url + "/api/model")["layers"]}
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
    shown = chart["iterations"]
    assert shown == [p["iteration"] for p in served["history"]][: len(shown)]  # every point, in order, none twice
    assert chart["ink"] > 0.01 * chart["canvas"]["width"] * chart["canvas"]["height"]  # pixels really drawn


def test_model_diagram_renders_and_answers_click_and_keyboard_in_firefox(firefox):
    seen, served = firefox
    diagram, layers = seen["diagram"], served["model"]
    assert diagram["width"] > 100 and diagram["height"] > 100
    blocks = [layer for layer in layers if layer["kind"] == "block"]
    assert diagram["parts"] == len(layers) + sum(len(b["children"]) for b in blocks)  # a box per part
    assert diagram["clicked"] == f"{blocks[0]['parameters']:,} parameters"
    attention = blocks[0]["children"][1]
    assert diagram["keyed"] == f"{attention['parameters']:,} parameters"
    assert "2 heads of size 16" in diagram["keyedDetail"]


def test_phone_width_has_no_horizontal_overflow_in_firefox(firefox):
    phone = firefox[0]["phone"]
    # Firefox headless keeps a classic scrollbar, so the page is a little narrower than 375 px
    assert phone["scrollWidth"] <= phone["clientWidth"] <= 375


def test_no_console_errors_or_csp_violations_in_firefox(firefox):
    seen, _ = firefox
    assert seen["consoleErrors"] == []
    assert seen["cspViolations"] == []
