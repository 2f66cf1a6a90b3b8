"""The model as an SVG diagram, drawn on the server from model_view's module tree (no script needed).

The main path reads top to bottom, as data flows: for a GPT, token and position embeddings, then
N x transformer block (its attention, MLP and norms drawn inside one box), then the final norm and
the LM head. Any other nn.Module gets the same kind of picture from its tree: wrappers that hold
most of the model are opened, runs of identical layers collapse to "x N", and where there are
more parts than fit, the biggest are drawn and the rest summed. A bar in each part shows its share
of the parameters; a tied weight (lm_head sharing wte's) is drawn as a dashed link. Hovering or
focusing a part (each is a tab stop) shows its parameter count, shapes and module path in the
panel under the drawing, by CSS alone; its <title> says the same to a screen reader.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["render", "parts", "Part", "WIDTH"]

WIDTH = 360  # the narrowest phone the page is made for: the drawing scales down from here, never up
MAX_PARTS = 12  # top-level parts drawn; past this, the smallest are summed into one
MAX_INNER = 6  # parts drawn inside a block
MAX_OPEN_DEPTH = 3  # how deep wrappers are opened
ROW, INNER_ROW, GAP, PAD = 30, 24, 12, 8
DETAIL_LINES = 3
SKIPPED_KINDS = ("dropout",)  # no parameters, no shape of their own: not a part of the picture


@dataclass
class Part:
    """One box of the drawing: a module (or a run of `repeat` identical ones, or `merged` small ones)."""

    name: str  # module path ("" for the root); for a run, the first layer's
    type: str
    kind: str
    parameters: int  # all of them: a run's is its layers' together
    shapes: dict = field(default_factory=dict)
    tied: dict = field(default_factory=dict)  # parameter -> the path it is tied to
    repeat: int = 1
    last: str = ""  # the last layer's path, for a run
    merged: int = 0  # how many small parts this one sums up
    inner: list["Part"] = field(default_factory=list)  # what a block is made of (one layer's)
    heads: str = ""  # an attention module's heads, as far as it says them


def _signature(node: dict) -> tuple:
    """What makes two layers the same layer: type, parameter count and the same of each child."""
    return (node.get("type"), node.get("parameters"),
            tuple(_signature(c) for c in node.get("children") or []))


def _part(node: dict) -> Part:
    return Part(name=str(node.get("name") or ""), type=str(node.get("type") or ""), kind=str(node.get("kind") or ""),
                parameters=_count(node.get("parameters")), shapes=dict(node.get("shapes") or {}),
                tied=dict(node.get("tied") or {}), heads=_heads(node))


def _heads(node: dict) -> str:
    heads, size, kv = (_count(node.get(k)) for k in ("heads", "head_size", "kv_heads"))
    if not heads:
        return ""
    return f"{heads} heads" + (f" \u00d7 {size}" if size else "") + (f", {kv} kv heads" if kv else "")


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0


def _worth_drawing(node: dict) -> bool:
    return str(node.get("kind")) not in SKIPPED_KINDS and bool(_count(node.get("parameters")) or node.get("tied"))


def _opens(node: dict, total: int) -> bool:
    """A wrapper to look inside: it holds most of the model, and is no layer, list or leaf."""
    return (bool(node.get("children")) and node.get("kind") not in ("list", "block", "attention", "mlp")
            and _count(node.get("parameters")) * 2 > total)


def _runs(children: list[dict]) -> list[Part]:
    """Children with consecutive identical layers collapsed into one part each (x N)."""
    result: list[Part] = []
    signatures: list[tuple] = []
    for child in children:
        if not _worth_drawing(child):
            continue
        signature = _signature(child)
        if result and signatures[-1] == signature:
            run = result[-1]
            run.repeat += 1
            run.parameters += _count(child.get("parameters"))
            run.last = str(child.get("name") or "")
            continue
        part = _part(child)
        part.inner = [_part(c) for c in child.get("children") or [] if _worth_drawing(c)][:MAX_INNER]
        result.append(part)
        signatures.append(signature)
    return result


def _main_path(node: dict, total: int, depth: int = 0) -> list[Part]:
    found: list[Part] = []
    own = {p: s for p, s in (node.get("shapes") or {}).items() if p not in (node.get("tied") or {})}
    if own and depth:  # an opened wrapper's own parameters (a learned scale, a class token)
        found.append(Part(name=str(node.get("name") or ""), type=str(node.get("type") or ""), kind="parameter",
                          parameters=sum(math.prod(s) for s in own.values()), shapes=own))
    pending: list[dict] = []

    def flush() -> None:
        found.extend(_runs(pending))
        pending.clear()

    for child in node.get("children") or []:
        if depth < MAX_OPEN_DEPTH and _opens(child, total):
            flush()
            found.extend(_main_path(child, total, depth + 1))
        elif child.get("kind") == "list":
            flush()
            found.extend(_runs(child.get("children") or []))  # a list of layers is its layers
        else:
            pending.append(child)
    flush()
    return found


def parts(tree: dict) -> list[Part]:
    """The boxes to draw, top to bottom. Past MAX_PARTS the biggest keep their place and the rest
    become one summed part (where the first of them was)."""
    total = _count(tree.get("parameters"))
    found = _main_path(tree, total) or [_part(tree)]
    if len(found) <= MAX_PARTS:
        return found
    keep = {id(p) for p in sorted(found, key=lambda p: -p.parameters)[:MAX_PARTS - 1]}
    result, rest = [], [p for p in found if id(p) not in keep]
    for part in found:
        if id(part) in keep:
            result.append(part)
        elif part is rest[0]:
            result.append(Part(name="", type="", kind="merged", parameters=sum(p.parameters for p in rest),
                               merged=len(rest)))
    return result


# --- drawing --------------------------------------------------------------------------------

def _fmt(count: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def _short(path: str) -> str:
    segments = path.split(".")
    return ".".join(segments[-2:]) if len(segments) > 1 and segments[-1].isdigit() else segments[-1]


def _label(part: Part) -> str:
    if part.merged:
        return f"{part.merged} smaller parts"
    name = _short(part.name) if part.name else (part.type or "model")
    if part.repeat > 1:
        return f"{part.type} \u00d7 {part.repeat}"
    return f"{name} \u00b7 {part.type}" if part.type and part.kind != "parameter" else name


def _shape(shape: Any) -> str:
    return "\u00d7".join(str(_count(d)) for d in shape) if shape else "scalar"


def _details(part: Part, total: int) -> list[str]:
    """The lines the detail panel shows for a part (and its <title> says)."""
    share = f" ({part.parameters / total:.1%} of {_fmt(total)})" if total else ""
    if part.merged:
        return [f"{part.merged} parts, each smaller than those drawn", f"{part.parameters:,} parameters{share}"]
    where = f"{part.name} \u2026 {part.last}" if part.repeat > 1 else (part.name or "the model itself")
    count = f"{part.parameters:,} parameters{share}"
    if part.repeat > 1:
        count += f"; {part.parameters // part.repeat:,} each"
    lines = [f"{where} ({part.type})" if part.type else where, count]
    shapes = [f"{p} {_shape(s)}" + (f" tied to {part.tied[p]}" if p in part.tied else "")
              for p, s in part.shapes.items()]
    inner = [f"{_short(p.name)} {_fmt(p.parameters)}" for p in part.inner]
    if part.heads or shapes or inner:
        lines.append(", ".join(([part.heads] if part.heads else []) + (shapes or inner)))
    return lines


def _group(part: Part, body: str, total: int, panel_top: float) -> str:
    """A part as a tab stop: its drawing, its <title>, and its lines for the detail panel."""
    details = _details(part, total)
    panel = "".join(_text(PAD, panel_top + 12 + 16 * n, line, "line") for n, line in enumerate(details))
    return (f'<g class="part-group" tabindex="0" role="listitem" data-part="{html.escape(part.name)}" '
            f'aria-label="{html.escape("; ".join(details))}"><title>{html.escape(chr(10).join(details))}'
            f'</title>{body}<g class="detail">{panel}</g></g>')


def _tied_target(part: Part, placed: dict[str, float]) -> Optional[float]:
    """The y of the part a tied parameter of `part` lives in, when that part is drawn."""
    for target in part.tied.values():
        owner = str(target).rsplit(".", 1)[0]
        if owner in placed:
            return placed[owner]
    return None


def _text(x: float, y: float, text: str, cls: str, anchor: str = "start") -> str:
    return (f'<text x="{x:.0f}" y="{y:.0f}" class="{cls}" text-anchor="{anchor}">'
            f'{html.escape(text)}</text>')


def _box(part: Part, x: float, y: float, width: float, height: float, total: int, cls: str) -> str:
    share = part.parameters / total if total else 0.0
    bar = max(2.0, (width - 2) * share) if part.parameters else 0.0
    return (f'<rect x="{x:.0f}" y="{y:.0f}" width="{width:.0f}" height="{height:.0f}" rx="5" class="{cls}"/>'
            + (f'<rect x="{x + 1:.0f}" y="{y + height - 5:.0f}" width="{bar:.1f}" height="4" class="share"/>'
               if bar else "")
            + _text(x + 8, y + height / 2 + 4, _label(part), "name")
            + _text(x + width - 8, y + height / 2 + 4, _fmt(part.parameters) if part.parameters else "tied", "count",
                    "end"))


def render(tree: Optional[dict]) -> str:
    """The diagram's SVG markup (every text escaped), or "" before the model is known. It carries
    no style of its own (the page's CSP allows only the page's hashed <style>): classes only."""
    if not isinstance(tree, dict):
        return ""
    total = _count(tree.get("parameters"))
    left, width = 28.0, WIDTH - 28.0 - PAD
    layout = []  # (part, the parts drawn inside it, its height)
    for part in parts(tree):
        inner = part.inner if part.kind == "block" or part.repeat > 1 else []
        layout.append((part, inner, ROW + (len(inner) * INNER_ROW + 6 if inner else 0)))
    panel_top = PAD + sum(height + GAP for _, _, height in layout) + 4
    drawn, links, placed, y = [], [], {}, PAD
    for index, (part, inner, height) in enumerate(layout):
        if index:
            drawn.append(f'<path d="M{left + width / 2:.0f} {y - GAP + 1:.0f} v{GAP - 3}" class="flow"/>')
        body = _box(part, left, y, width, ROW, total, f"part {part.kind}")
        if inner:  # one layer's insides, under the run's own row, each a tab stop of its own
            body = (f'<rect x="{left:.0f}" y="{y:.0f}" width="{width:.0f}" height="{height:.0f}" rx="6" '
                    f'class="layer"/>' + body)
            for row, piece in enumerate(inner):
                box = _box(piece, left + 14, y + ROW + row * INNER_ROW, width - 22, INNER_ROW - 4,
                           max(1, part.parameters // part.repeat), f"part inner {piece.kind}")
                body += _group(piece, box, total, panel_top)
        drawn.append(_group(part, body, total, panel_top))
        target = _tied_target(part, placed)
        if target is not None:
            links.append(f'<path d="M{left:.0f} {y + ROW / 2:.0f} h-12 V{target:.0f} h12" class="tied"/>'
                         + _text(left - 16, (y + ROW / 2 + target) / 2 + 4, "tied", "tied-label", "middle"))
        placed[part.name] = y + ROW / 2
        if part.last:
            placed[part.last] = y + ROW / 2
        y += height + GAP
    height = panel_top + DETAIL_LINES * 16 + PAD
    hint = _text(PAD, panel_top + 12, "Hover over or tab to a part for its details.", "hint")
    return (f'<svg class="diagram" viewBox="0 0 {WIDTH} {height:.0f}" role="list" '
            f'aria-label="architecture of the model, input at the top" xmlns="http://www.w3.org/2000/svg">'
            f'{"".join(links)}{"".join(drawn)}{hint}</svg>')
