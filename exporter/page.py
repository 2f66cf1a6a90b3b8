"""The live page: static/index.html with the current figures filled in, so it reads with JavaScript off.

Placeholders are `{{name}}`, filled with HTML-escaped text; the inline script then takes over with
/api/history and /api/stream. The inline <script> and <style> hold no placeholders, so their SHA-256
hashes are fixed and the Content-Security-Policy allows exactly them: no CDN, no eval, no other
origin. The formatters mirror the script's (fmtLoss, fmtRate, ...) so a figure reads the same before
and after the script updates it. The module tree is drawn here only, as nested <details>
(collapsible and keyboard reachable without any script); the script takes it from a fresh copy of
the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from . import diagram

TEMPLATE_PATH = Path(__file__).with_name("static") / "index.html"
PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
INLINE_CODE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
DASH = "\u2013"  # shown for a figure not known yet (or not finite)
# The history overview the page carries for its first chart, so that chart needs no request:
# the fields the chart draws, about two points per pixel column of the widest chart (the page's
# <main> is at most 1,120 CSS px, the plot 64 px narrower). A narrower chart draws it as well; a
# zoom fetches its range from /api/history.
CHART_FIELDS = ("iteration", "loss", "timestamp", "val_loss", "eval_train_loss")
FIRST_OVERVIEW_POINTS = 2 * (1120 - 64)


@dataclass(frozen=True)
class PageTemplate:
    """The page's HTML with placeholders, and the CSP that allows its own inline code."""

    text: str
    content_security_policy: str


class _Html(str):
    """A value that is already HTML (built from escaped parts): inserted as is."""


@lru_cache(maxsize=1)
def load_template() -> PageTemplate:
    """Read index.html once and hash its inline script and style for the CSP."""
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    sources: dict[str, list[str]] = {"script": [], "style": []}
    for tag, code in INLINE_CODE.findall(text):
        if PLACEHOLDER.search(code):  # a filled value would change the hash per request
            raise ValueError(f"{TEMPLATE_PATH}: a placeholder inside <{tag}> would break its CSP hash")
        digest = base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode()
        sources[tag].append(f"'sha256-{digest}'")
    policy = "; ".join([
        "default-src 'self'",
        "script-src " + " ".join(sources["script"]),
        "style-src 'self' " + " ".join(sources["style"]),
        "img-src 'self' data: blob:",  # data: for the empty favicon, blob: for the PNG export
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    return PageTemplate(text, policy)


def render(monitor) -> tuple[bytes, dict[str, str]]:
    """The page for the monitor's current state: (UTF-8 HTML, response headers)."""
    template = load_template()
    status, model = monitor.status() or {}, monitor.model()
    try:
        values = page_values(status, model)
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a malformed tree from the loop
        monitor.report_error("page", e)
        values = page_values(status, {**model, "tree": None})

    values["first_history"] = first_history(monitor)
    values["samples"] = samples_html(monitor.samples)
    values["last_sample"] = str(last.iteration) if (last := monitor.samples.newest()) is not None else ""

    def fill(match: re.Match) -> str:
        value = values[match.group(1)]  # a KeyError here is a typo in index.html: tests catch it
        return value if isinstance(value, _Html) else html.escape(value, quote=True)

    body = PLACEHOLDER.sub(fill, template.text).encode("utf-8")
    headers = {
        "Content-Security-Policy": template.content_security_policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",  # the figures are live: never show a stale copy
    }
    return body, headers


PAGE_SAMPLES = 10  # the newest, and the older ones folded under it; /api/samples has the rest


def samples_html(samples) -> _Html:
    """The newest sample open, older ones folded under it, every text escaped (untrusted)."""
    found, more = samples.page(PAGE_SAMPLES)
    if not found:
        return _Html('<p class="muted">The model writes a sample at each evaluation; none yet.</p>')

    def figure(sample) -> str:
        prompt = f' \u00b7 prompt <q>{html.escape(sample.prompt)}</q>' if sample.prompt.strip() else ""
        return (f'<figure class="sample" data-iteration="{sample.iteration}"><figcaption>iteration '
                f'{html.escape(fmt_int(sample.iteration))}{prompt}</figcaption>'
                f'<pre>{html.escape(sample.text)}</pre></figure>')

    newest, older = found[0], found[1:]
    folded = (f'<details data-testid="older-samples"><summary>{len(older)} older</summary>'
              + "".join(figure(s) for s in older) + "</details>") if older else ""
    everything = '<p class="hint"><a href="api/samples?limit=100">older samples as JSON</a></p>' if more else ""
    return _Html(figure(newest) + folded + everything)


def first_history(monitor) -> _Html:
    """The overview of the history as /api/history?format=columns&points= gives it, as the text of
    a JSON data block (`<` escaped, so no value can end the block); `null` if it failed."""
    try:
        body = monitor.history.to_json(monitor.run_id, monitor.rank, layout="columns", names=CHART_FIELDS,
                                       points=FIRST_OVERVIEW_POINTS)
    except Exception as e:  # noqa: BLE001 - the page still shows its figures; the script fetches the history
        monitor.report_error("page", e)
        return _Html("null")
    return _Html(body.decode().replace("<", "\\u003c"))


def page_values(status: dict, model: dict) -> dict[str, str]:
    """Every placeholder's text, from an /api/status snapshot and an /api/model answer."""
    get = status.get
    state = str(get("state") or "unknown")
    iteration, max_iterations = get("iteration"), get("max_iterations")
    progress = iteration / max_iterations if _finite(iteration) and _finite(max_iterations) and max_iterations > 0 else 0
    average = get("average_loss") or {}
    return {
        "run_id": str(get("run_id") or ""),
        "rank": str(get("rank", 0)),
        "world_size": str(get("world_size", 1)),
        "dataset": str(get("dataset") or DASH),
        "device": str(get("device") or DASH),
        "state": state,
        "progress_ratio": f"{min(1.0, progress):.4f}",
        "fig_iteration": f"{fmt_int(iteration)} / {fmt_int(max_iterations)}",
        "fig_loss": fmt_loss(get("loss")),
        "fig_val_loss": fmt_loss(get("val_loss")),
        "fig_rate": f"{fmt_rate(get('iterations_per_second'))} it/s",
        "fig_eta": fmt_duration(get("eta_seconds")),
        "fig_parameters": fmt_int(get("parameters_total")),
        "fig_avg_loss": fmt_loss(average.get("value")),
        "fig_avg_window": f"(last {fmt_duration(average['window_seconds'])})" if _finite(average.get("window_seconds")) else "",
        "fig_trend": fmt_trend(get("trend")),
        "fig_iterations_per_second": fmt_rate(get("iterations_per_second")),
        "fig_tokens_per_second": fmt_rate(get("tokens_per_second")),
        "fig_best_val_loss": fmt_loss(get("best_val_loss")),
        "fig_mfu": fmt_percent(get("mfu")),
        "fig_step": fmt_seconds(get("step_seconds")),
        "fig_goodput": fmt_percent(get("goodput")),
        "fig_goodput_rest": fmt_largest_other_phase(get("time_seconds")),
        "fig_loss_spike": fmt_spike(get("last_loss_spike")),
        "fig_grad_norm_spike": fmt_spike(get("last_grad_norm_spike")),
        "fig_lr": f"{get('lr'):.2e}" if _finite(get("lr")) else DASH,
        "fig_elapsed": fmt_duration(get("elapsed_seconds")),
        **gpu_figures(status),
        "model_summary": model_summary(model.get("model_config") or {}, model.get("tree")),
        "parameter_items": parameter_items(model.get("parameters") or {}),
        "model_diagram": model_diagram(model.get("tree")),
        "model_tree": model_tree(model.get("tree")),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt_loss(value: Any) -> str:
    return f"{value:.4f}" if _finite(value) else DASH


def fmt_int(value: Any) -> str:
    return f"{round(value):,}" if _finite(value) else DASH


def fmt_rate(value: Any) -> str:
    """3 significant figures or so: 1,234 / 56.7 / 8.90."""
    if not _finite(value):
        return DASH
    if abs(value) >= 100:
        return f"{round(value):,}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def fmt_duration(seconds: Any) -> str:
    """1h 02m, 3m 04s, 5s."""
    if not _finite(seconds) or seconds < 0:
        return DASH
    s = round(seconds)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {sec:02d}s" if m else f"{sec}s"


def fmt_seconds(seconds: Any) -> str:
    if not _finite(seconds):
        return DASH
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_percent(ratio: Any) -> str:
    return f"{ratio * 100:.1f} %" if _finite(ratio) else DASH


def fmt_largest_other_phase(time_seconds: Optional[dict]) -> str:
    """Beside the goodput, where most of the rest of the wall clock went: "· data wait 20.0 %"
    (the first of equal phases, in /api/status's order); "" when no other phase has any time."""
    if not isinstance(time_seconds, dict):
        return ""
    seconds = {phase: s for phase, s in time_seconds.items() if _finite(s)}
    total = sum(seconds.values())
    others = [(phase, s) for phase, s in seconds.items() if phase != "step" and s > 0]
    if total <= 0 or not others:
        return ""
    phase, most = max(others, key=lambda item: item[1])
    return f"\u00b7 {phase.replace('_', ' ')} {fmt_percent(most / total)}"


def fmt_spike(spike: Optional[dict]) -> str:
    """The last spike of a series: "it 1,234 (7.1σ)", its iteration and how many standard
    deviations above its window's mean; a dash before any."""
    if not isinstance(spike, dict) or not _finite(spike.get("iteration")):
        return DASH
    sigmas = spike.get("sigmas")
    return f"it {fmt_int(spike['iteration'])}" + (f" ({sigmas:.1f}\u03c3)" if _finite(sigmas) else "")


def fmt_trend(trend: Optional[dict]) -> str:
    """"improving (+3.2 %)", "plateau (-0.4 %)", or "unknown" before both windows have enough points."""
    if not trend or not trend.get("state"):
        return "unknown"
    ratio = trend.get("improvement_ratio")
    return f"{trend['state']} ({ratio * 100:+.1f} %)" if _finite(ratio) else str(trend["state"])


def gpu_figures(status: dict) -> dict[str, str]:
    """The Device section: the first GPU's name, reserved / total memory and utilisation from
    /api/status's `gpus`; "no GPU" when the run's device is not CUDA."""
    gpus = status.get("gpus") or []
    device = str(status.get("device") or "")
    if not gpus:
        name = DASH if not device else (f"{device} (no readings yet)" if device.startswith("cuda") else "no GPU")
        return {"fig_gpu": name, "fig_gpu_memory": DASH, "fig_gpu_utilization": DASH}
    first = gpus[0]
    reserved, total = first.get("memory_reserved_bytes"), first.get("memory_total_bytes")
    memory = f"{reserved / 2**30:.1f} / {total / 2**30:.1f} GiB" if _finite(reserved) and _finite(total) else DASH
    utilization = first.get("utilization_ratio")
    return {"fig_gpu": f"{first.get('name')} (cuda:{first.get('gpu')})", "fig_gpu_memory": memory,
            "fig_gpu_utilization": f"{utilization * 100:.0f} %" if _finite(utilization) else DASH}


def model_summary(config: dict, tree: Optional[dict] = None) -> str:
    """One line: the model's type and its nanoGPT-style shape, as far as they are known."""
    parts = [f"{config[key]} {label}" for key, label in
             (("n_layer", "layers"), ("n_head", "heads"), ("n_embd", "embedding dims"),
              ("block_size", "context"), ("vocab_size", "vocab")) if key in config]
    if isinstance(tree, dict) and tree.get("type"):
        parts.insert(0, str(tree["type"]))
    return " \u00b7 ".join(parts) if parts else "The model is described once training starts."


def parameter_items(parameters: dict) -> _Html:
    """<li> per parameter component (total first), escaped."""
    ordered = sorted(parameters.items(), key=lambda kv: kv[0] != "total")
    return _Html("".join(
        f"<li>{html.escape(str(name).replace('_', ' '))}: {html.escape(fmt_int(count))}</li>"
        for name, count in ordered))


MAX_HEAD_TICKS = 64  # one tick per attention head, up to this many


def _shape(shape: Any) -> str:
    return " \u00d7 ".join(str(int(d)) for d in shape) if shape else "scalar"


def _node_label(node: dict) -> str:
    """The row of one module: name, type, parameters, and what its kind adds (heads, shapes, parts)."""
    name = str(node.get("name") or "")
    segments = name.split(".") if name else ["model"]
    short = ".".join(segments[-2:]) if segments[-1].isdigit() else segments[-1]  # a layer: h.0, not 0
    parts = [f'<span class="mname">{html.escape(short)}</span>',
             f'<span class="mtype">{html.escape(str(node.get("type", "")))}</span>',
             f'<span class="mcount">{html.escape(fmt_int(node.get("parameters")))} params</span>']
    heads = node.get("heads")
    if _finite(heads):
        text = f"{int(heads)} heads" + (f" \u00d7 {int(node['head_size'])}" if _finite(node.get("head_size")) else "")
        if _finite(node.get("kv_heads")):
            text += f", {int(node['kv_heads'])} kv heads"
        ticks = "<i></i>" * min(int(heads), MAX_HEAD_TICKS)
        parts.append(f'<span class="mheads">{html.escape(text)} '
                     f'<span class="ticks" aria-hidden="true">{ticks}</span></span>')
    tied = node.get("tied") or {}
    shapes = [f"{html.escape(str(p))} {html.escape(_shape(shape))}"
              + (f" (tied to {html.escape(str(tied[p]))})" if p in tied else "")
              for p, shape in (node.get("shapes") or {}).items()]
    if shapes:
        parts.append(f'<span class="mshape">{", ".join(shapes)}</span>')
    if node.get("kind") == "block" and node.get("children"):  # a layer at a glance, even when closed
        kinds = [str(c.get("kind", "")) for c in node["children"] if c.get("parameters") or c.get("heads")]
        parts.append("".join(f'<span class="chip">{html.escape(k)}</span>' for k in kinds))
    return " ".join(parts)


def _tree_items(node: dict, depth: int, first_in_list: bool) -> str:
    testid = "module-" + (str(node.get("name")).replace(".", "-") if node.get("name") else "root")
    label = _node_label(node)
    children = node.get("children") or []
    omitted = node.get("omitted")
    more = (f'<li class="muted">{html.escape(fmt_int(omitted))} more modules not shown</li>'
            if _finite(omitted) else "")
    if not children and not more:
        return f'<li data-testid="{html.escape(testid)}" data-kind="{html.escape(str(node.get("kind", "")))}">' \
               f'<span class="leaf">{label}</span></li>'
    # open: the top levels, and the first layer of a list (the others look the same)
    is_open = " open" if depth <= 2 or first_in_list else ""
    is_list = node.get("kind") == "list"
    inner = "".join(_tree_items(c, depth + 1, is_list and i == 0 and depth < 4) for i, c in enumerate(children))
    return (f'<li data-testid="{html.escape(testid)}" data-kind="{html.escape(str(node.get("kind", "")))}">'
            f'<details{is_open}><summary>{label}</summary><ul>{inner}{more}</ul></details></li>')


class _DrawnOnce:
    """A drawing of the model tree, made once per tree (a run draws its tree once, every page reuses
    it): the (tree, HTML) pair is swapped whole, so a reader never sees one tree's HTML for another."""

    def __init__(self, draw: Callable[[dict], str]):
        self.draw, self.last = draw, (None, _Html(""))

    def __call__(self, tree: Optional[dict]) -> _Html:
        if not isinstance(tree, dict):
            return _Html("")  # empty until the model is known
        cached_tree, cached_html = self.last  # one read: another thread may swap the pair meanwhile
        if cached_tree is tree:
            return cached_html
        drawn = _Html(self.draw(tree))
        self.last = (tree, drawn)
        return drawn


# the architecture diagram (exporter.diagram's SVG, every text escaped there), and the module tree
# as nested <details> lists, escaped
model_diagram = _DrawnOnce(diagram.render)
model_tree = _DrawnOnce(lambda tree: _tree_items(tree, 0, False))
