"""Screenshots of the live page for the README, from a real short training run.

    python scripts/screenshots.py [--out docs/img]

Starts the trainer (a tiny model on the default offline corpus, metrics on a free port), waits
until the chart has enough logged points and evals to look like a run, then photographs the page
in Chromium (Playwright, /usr/bin/chromium) at desktop and phone width, and the model's diagram
and the samples sections on their own. Needs the test extras
(`pip install -e '.[test]'`) and Debian's chromium; scripts/test.sh installs both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--n_layer=2", "--n_head=4", "--n_embd=64", "--block_size=64", "--batch_size=8", "--dropout=0.0",
         "--device=cpu", "--compile=False", "--max_iters=1500", "--log_interval=5", "--eval_interval=50",
         "--eval_iters=5", "--run-id=readme"]
ENOUGH = 400  # iterations: the loss has fallen visibly and eight evals are on the chart
SHOTS = {  # file name -> Playwright context options
    "live-page-desktop.png": dict(viewport={"width": 1280, "height": 800}, device_scale_factor=1),
    "live-page-phone.png": dict(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True),
}
# file name -> the section photographed on its own (desktop width), and the part of the model diagram
# focused first so that its details show, as a keyboard user sees them
SECTIONS = {
    "live-page-model.png": ("section[aria-labelledby=model-title]", '[data-part="transformer.h.0.attn"]'),
    "live-page-samples.png": ("section[aria-labelledby=samples-title]", None),
}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def start_trainer(out_dir: Path) -> tuple[subprocess.Popen, str]:
    """The real trainer in its own process group; returns it and its base URL once it is serving."""
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", f"--out_dir={out_dir}", "--metrics-port=0",
                             *TRAIN], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        match = re.search(r"metrics: (http://[\d.]+:\d+)/metrics", line)
        if match:
            # keep draining its output, so a full pipe never blocks the training
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match.group(1)
    fail("the trainer exited before serving:\n" + "".join(lines[-20:]))


def shoot(base_url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    headless=True, args=CHROMIUM_ARGS)
        try:
            for name, options in SHOTS.items():
                context = browser.new_context(color_scheme="light", **options)
                page = context.new_page()
                page.goto(base_url + "/")
                page.wait_for_function(f"() => window.__nanogpt && __nanogpt.lastIteration() >= {ENOUGH} "
                                       "&& __nanogpt.evals() >= 4 && __nanogpt.draws() > 0", timeout=300_000)
                page.wait_for_selector("[data-testid=module-root]", state="attached")
                page.wait_for_selector("[data-testid=connection][data-state=live]")
                page.screenshot(path=str(out / name))
                if name == "live-page-desktop.png":
                    for section_name, (section, focus) in SECTIONS.items():
                        if focus:
                            page.locator(focus).focus()
                        page.locator(section).screenshot(path=str(out / section_name))
                        print(f"{out / section_name}: {(out / section_name).stat().st_size // 1024} KB")
                context.close()
                print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder for the PNGs")
    args = parser.parse_args()
    try:
        import playwright  # noqa: F401
    except ImportError:
        fail("playwright is not installed (pip install -e '.[test]')")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base_url = start_trainer(Path(tmp) / "out")
        try:
            started = time.monotonic()
            shoot(base_url, args.out)
            print(f"took {time.monotonic() - started:.0f}s")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
