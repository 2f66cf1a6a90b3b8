// The live page's checks from tests/e2e/test_page.py, in Debian's firefox-esr over WebDriver BiDi
// (Playwright drives only its own patched Firefox; puppeteer-core drives a stock one).
//
//   node tests/firefox/page_check.mjs URL PROFILE_DIR [FIREFOX]
//
// Opens URL (a trainer's live page, training), watches the chart draw and update, reads the
// canvas pixels, reads the module tree and opens and closes a block from the keyboard, focuses a
// part of the architecture diagram, narrows to
// a phone width, and prints one JSON object of what it saw on stdout. It asserts nothing: tests/e2e/test_page_firefox.py does.
// PROFILE_DIR (empty, made by the caller) holds Firefox's profile and HOME, so nothing is written
// elsewhere. Exit 1 with {"error": ...} when the page never got that far.
import puppeteer from "puppeteer-core";

const [url, profile, executablePath = "/usr/bin/firefox-esr"] = process.argv.slice(2);
const WAIT_MS = 60_000;  // per step; a trainer on a shared 2-core machine can be slow
const ADVANCE = 20;      // iterations the chart must move on by while watched, as in test_page.py

// Runs in the page before its own script: CSP violations are events, not console messages.
function watchCsp() {
  window.__cspViolations = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(
    `${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`));
}

// Pixels of the chart canvas unlike its top-left corner (the background): what was drawn.
function inkPixels(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let ink = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2] || data[i + 3] !== data[3]) ink++;
  }
  return ink;
}

const hook = (page, expression) => page.evaluate(`window.__nanogpt && window.__nanogpt.${expression}`);
const text = (page, testid) => page.$eval(`[data-testid="${testid}"]`, (el) => el.textContent);

async function check(browser) {
  const page = await browser.newPage();
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${m.text()} (${m.location().url})`); });
  page.on("pageerror", (e) => consoleErrors.push(`uncaught: ${e.message || e}`));
  await page.evaluateOnNewDocument(watchCsp);
  await page.setViewport({ width: 1000, height: 900 });

  await page.goto(url + "/");
  await page.waitForFunction("window.__nanogpt && __nanogpt.points() > 0 && __nanogpt.draws() > 0",
    { timeout: WAIT_MS });
  const first = { draws: await hook(page, "draws()"), last: await hook(page, "lastIteration()") };
  await page.waitForFunction(`__nanogpt.lastIteration() >= ${first.last + ADVANCE}`, { timeout: WAIT_MS });
  const chart = {
    firstDraws: first.draws, firstLast: first.last,
    draws: await hook(page, "draws()"), last: await hook(page, "lastIteration()"),
    iterations: await hook(page, "iterations()"),
    connection: await text(page, "connection"),
    figLoss: await text(page, "fig-loss"),
    figGoodput: await text(page, "fig-goodput"),
    canvas: await page.$eval("[data-testid=chart]", (c) => ({ width: c.width, height: c.height })),
    ink: await page.$eval("[data-testid=chart]", inkPixels),
  };

  // The module tree, server-rendered (or taken from a fresh copy of the page if the run had not
  // described its model yet): every row, then the second block opened and closed from the keyboard.
  await page.waitForSelector("[data-testid=module-root]", { timeout: WAIT_MS });
  const rows = await page.$$eval("[data-testid^=module-]", (items) => items.map((li) => ({
    testid: li.dataset.testid, kind: li.dataset.kind,
    label: li.querySelector(":scope > details > summary, :scope > .leaf").textContent,
  })));
  const blocks = rows.filter((r) => r.kind === "block").map((r) => r.testid);
  const tree = { rows, summary: await text(page, "model-summary"), keyboard: null };
  if (blocks.length >= 2) {
    const [first, second] = blocks;
    const attention = `[data-testid=${second}] [data-kind=attention]`;
    // checkVisibility, not boxes: Firefox hides a closed <details>' content with content-visibility
    const shown = () => page.$eval(attention, (el) => el.checkVisibility());
    const summaryOf = (testid) => `[data-testid=${testid}] > details > summary`;
    const closedAtFirst = !(await shown());
    await page.$eval(summaryOf(first), (el) => el.focus());
    let tabs = 0;
    let focused = false;
    while (!focused && tabs < 20) {  // Tab through the first block's rows to the second's summary
      await page.keyboard.press("Tab");
      tabs++;
      focused = await page.$eval(summaryOf(second), (el) => el === document.activeElement);
    }
    await page.keyboard.press("Enter");
    const opened = await shown();
    const openedText = await page.$eval(attention, (el) => el.textContent);
    await page.keyboard.press("Enter");
    tree.keyboard = { block: second, closedAtFirst, tabs, focused, opened, openedText, closedAgain: !(await shown()) };
  }

  // The architecture diagram (server-rendered SVG): one tab stop per drawn part, each with an
  // accessible name; focusing one shows its details, by CSS alone.
  const diagramParts = await page.$$eval("[data-testid=model-diagram] .part-group", (groups) => groups.map((g) => ({
    part: g.dataset.part, label: g.getAttribute("aria-label"), tabindex: g.getAttribute("tabindex") })));
  const shows = (selector) => page.$eval(selector, (el) => getComputedStyle(el).display !== "none");
  const attentionPart = diagramParts.find((p) => p.part.endsWith(".attn"));
  const diagram = { parts: diagramParts, focused: null };
  if (attentionPart) {
    const selector = `[data-testid=model-diagram] [data-part="${attentionPart.part}"]`;
    const hiddenAtFirst = !(await shows(`${selector} > g.detail`));
    await page.$eval(selector, (el) => el.focus());
    diagram.focused = {
      part: attentionPart.part, hiddenAtFirst, shown: await shows(`${selector} > g.detail`),
      detail: await page.$eval(`${selector} > g.detail`, (el) => el.textContent),
      hintHidden: !(await shows("[data-testid=model-diagram] text.hint")),
    };
  }

  await page.setViewport({ width: 360, height: 740 });
  diagram.width360 = await page.$eval("[data-testid=model-diagram] svg", (svg) => svg.getBoundingClientRect().width);
  await page.setViewport({ width: 375, height: 667 });
  const phone = await page.evaluate(() =>
    ({ scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth }));

  const cspViolations = await page.evaluate(() => window.__cspViolations);
  await page.close();  // before the trainer goes, so its event stream ends first
  return { browser: await browser.version(), chart, tree, diagram, phone, consoleErrors, cspViolations };
}

let browser;
let exitCode = 0;
try {
  browser = await puppeteer.launch({
    browser: "firefox", executablePath, headless: true,
    userDataDir: profile,
    // HOME too, so a root user's real profile and caches stay untouched.
    env: { ...process.env, HOME: profile, MOZ_CRASHREPORTER_DISABLE: "1" },
    timeout: WAIT_MS,
  });
  console.log(JSON.stringify(await check(browser)));
} catch (error) {
  console.log(JSON.stringify({ error: String(error && error.stack || error) }));
  exitCode = 1;
} finally {
  // puppeteer also kills the browser if this process exits or gets SIGTERM/SIGINT/SIGHUP
  if (browser) await browser.close().catch(() => browser.process()?.kill("SIGKILL"));
}
process.exit(exitCode);
