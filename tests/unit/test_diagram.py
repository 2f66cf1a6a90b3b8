"""exporter.diagram: the model's architecture as an SVG drawn on the server, from any module tree.

Trees come from nanogpt_monitor.model_view.describe on real modules: nanoGPT's GPT and tiny
Hugging Face GPT-2 and Llama models built from configs (never downloaded).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest
import torch

from exporter import diagram, page
from nanogpt.model import GPT, GPTConfig
from nanogpt_monitor.model_view import describe
from tests.support.models import gpt2, llama

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def nanogpt_tree() -> dict:
    return describe(GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0)))


def drawn(tree: dict) -> ET.Element:
    return ET.fromstring(diagram.render(tree))  # well-formed XML, or this raises


def groups(svg: ET.Element) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if g.get("class") == "part-group"]


def test_a_gpt_reads_embeddings_then_blocks_then_norm_then_head(nanogpt_tree):
    kinds = [(p.kind, p.repeat) for p in diagram.parts(nanogpt_tree)]
    assert kinds == [("embedding", 1), ("embedding", 1), ("block", 4), ("norm", 1), ("linear", 1)]


def test_repeated_blocks_collapse_to_one_box_that_says_how_many(nanogpt_tree):
    block = diagram.parts(nanogpt_tree)[2]
    assert (block.name, block.last) == ("transformer.h.0", "transformer.h.3")
    texts = [t.text for t in drawn(nanogpt_tree).iter(f"{SVG}text")]
    assert "Block \u00d7 4" in texts and not any("h.1" in (t or "") for t in texts if "\u2026" not in (t or ""))


def test_attention_and_mlp_are_drawn_inside_the_block(nanogpt_tree):
    block = diagram.parts(nanogpt_tree)[2]
    assert [p.kind for p in block.inner] == ["norm", "attention", "norm", "mlp"]
    outer = next(g for g in groups(drawn(nanogpt_tree)) if g.get("data-part") == "transformer.h.0")
    inside = [g.get("data-part") for g in groups(outer)][1:]  # iter() starts with the block itself
    assert inside == ["transformer.h.0.ln_1", "transformer.h.0.attn", "transformer.h.0.ln_2", "transformer.h.0.mlp"]


def test_the_parts_add_up_to_the_model_with_a_tied_weight_counted_once(nanogpt_tree):
    assert sum(p.parameters for p in diagram.parts(nanogpt_tree)) == nanogpt_tree["parameters"]


def test_each_part_shows_its_share_of_the_parameters(nanogpt_tree):
    bars = {g.get("data-part"): float(next(r for r in g.findall(f"{SVG}rect") if r.get("class") == "share")
                                      .get("width"))
            for g in groups(drawn(nanogpt_tree)) if any(r.get("class") == "share" for r in g.findall(f"{SVG}rect"))}
    parts = {p.name: p.parameters for p in diagram.parts(nanogpt_tree)}
    assert bars["transformer.h.0"] > bars["transformer.wte"] > bars["transformer.wpe"]
    assert bars["transformer.h.0"] == pytest.approx((diagram.WIDTH - 36 - 2) * parts["transformer.h.0"]
                                                    / nanogpt_tree["parameters"], abs=0.1)


@pytest.mark.parametrize("make, tied", [(lambda: gpt2(True), True), (lambda: gpt2(False), False),
                                        (lambda: llama(False), False), (lambda: llama(True), True)],
                         ids=["gpt2 tied", "gpt2 untied", "llama", "llama tied"])
def test_a_tied_head_is_drawn_linked_to_its_embedding_and_an_untied_one_is_not(make, tied):
    svg = drawn(describe(make()))
    links = [p for p in svg.iter(f"{SVG}path") if p.get("class") == "tied"]
    assert len(links) == (1 if tied else 0)


def test_the_nanogpt_head_is_tied(nanogpt_tree):
    assert len([p for p in drawn(nanogpt_tree).iter(f"{SVG}path") if p.get("class") == "tied"]) == 1


@pytest.mark.parametrize("make, layers", [(lambda: gpt2(True), 2), (lambda: llama(False), 2)], ids=["gpt2", "llama"])
def test_hugging_face_models_get_the_same_shape_of_picture(make, layers):
    kinds = [p.kind for p in diagram.parts(describe(make()))]
    assert kinds[0] == "embedding" and kinds[-1] == "linear" and kinds[-2] == "norm"
    assert [p.repeat for p in diagram.parts(describe(make())) if p.kind == "block"] == [layers]


def test_every_part_is_a_tab_stop_whose_title_gives_count_shapes_and_path(nanogpt_tree):
    svg = drawn(nanogpt_tree)
    wte = next(g for g in groups(svg) if g.get("data-part") == "transformer.wte")
    title = wte.find(f"{SVG}title").text
    assert "transformer.wte (Embedding)" in title and "2,080 parameters" in title and "weight 65\u00d732" in title
    assert all(g.get("tabindex") == "0" and g.find(f"{SVG}title").text for g in groups(svg))
    attn = next(g for g in groups(svg) if g.get("data-part") == "transformer.h.0.attn")
    assert "2 heads \u00d7 16" in attn.find(f"{SVG}title").text


def test_it_is_drawn_for_a_360_px_wide_screen(nanogpt_tree):
    svg = drawn(nanogpt_tree)
    x, y, width, height = map(float, svg.get("viewBox").split())
    assert (x, width) == (0, 360)
    right_edges = [float(r.get("x")) + float(r.get("width")) for r in svg.iter(f"{SVG}rect")]
    assert max(right_edges) <= 360 and min(float(r.get("x")) for r in svg.iter(f"{SVG}rect")) >= 0


def test_more_parts_than_fit_keep_the_biggest_and_sum_the_rest():
    model = torch.nn.Sequential(*[torch.nn.Linear(i + 1, 2) for i in range(30)])  # 30 different layers
    found = diagram.parts(describe(model))
    assert len(found) == diagram.MAX_PARTS and found[-1].name == "29"  # the biggest keep their place
    merged = next(p for p in found if p.kind == "merged")
    assert merged.merged == 30 - (diagram.MAX_PARTS - 1)
    assert sum(p.parameters for p in found) == sum(p.numel() for p in model.parameters())


def test_identical_leaves_in_a_row_collapse_too():
    found = diagram.parts(describe(torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(5)])))
    assert [(p.type, p.repeat, p.name, p.last) for p in found] == [("Linear", 5, "0", "4")]


def test_names_from_the_loop_are_escaped():
    evil = "<img src=x onerror=alert(1)>"
    tree = {"name": "", "type": "M", "kind": "model", "parameters": 10, "children": [
        {"name": evil, "type": evil, "kind": "linear", "parameters": 10, "shapes": {evil: [2, 5]}}]}
    svg = diagram.render(tree)
    assert "<img" not in svg and "&lt;img" in svg
    drawn(tree)


def test_nothing_is_drawn_before_the_model_is_known():
    assert diagram.render(None) == "" and page.model_diagram(None) == ""


def test_the_diagram_carries_no_style_the_pages_csp_would_block(nanogpt_tree):
    svg = diagram.render(nanogpt_tree)
    assert "<style" not in svg and not re.search(r"\sstyle=", svg)


def test_the_page_draws_the_diagram_above_the_tree(nanogpt_tree):
    values = page.page_values({}, {"tree": nanogpt_tree})
    assert values["model_diagram"].startswith("<svg") and values["model_tree"]
    template = page.load_template().text
    assert template.index("{{model_diagram}}") < template.index("{{model_tree}}")


def test_a_malformed_count_draws_as_zero_rather_than_failing():
    tree = {"name": "", "type": "M", "kind": "model", "parameters": math.nan,
            "children": [{"name": "a", "type": "Linear", "kind": "linear", "parameters": "x", "tied": {"w": "b.w"}}]}
    drawn(tree)
