"""exporter.page: the live page's HTML as rendered on the server (what a browser without JavaScript
shows), in particular the model's module tree. The browser side is tests/e2e/test_page.py."""

from __future__ import annotations

import json
import re

import pytest

from exporter import TrainingMonitor
from exporter.page import (CHART_FIELDS, FIRST_OVERVIEW_POINTS, TEMPLATE_PATH, fmt_largest_other_phase, model_summary,
                          model_tree, render)
from nanogpt.model import GPT, GPTConfig
from nanogpt_monitor.model_view import describe
from tests.support.recorded import read_back

MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)


@pytest.fixture(scope="module")
def nanogpt_tree() -> dict:
    return describe(GPT(GPTConfig(**MODEL)))


@pytest.fixture
def recording(tmp_path):
    """Makes a monitor recording into the test's run directory."""
    return lambda run_id="page": TrainingMonitor(run_id=run_id, rank=0, directory=tmp_path / "run")


def rendered(monitor) -> str:
    """The page the monitor process serves for what `monitor` recorded."""
    return render(read_back(monitor).view(0))[0].decode()


@pytest.fixture
def page_of(recording):
    def page(**run) -> str:
        monitor = recording()
        monitor.run_started(max_iterations=10, **run)
        return rendered(monitor)

    return page


def item(html: str, testid: str) -> str:
    """The opening of the <li> of one module and its row (up to its children)."""
    match = re.search(rf'<li data-testid="{testid}"[^>]*>(.*?)(?:<ul>|</li>)', html)
    assert match, f"no {testid} in the tree"
    return match.group(1)


def test_the_tree_is_in_the_html_itself(page_of, nanogpt_tree):
    html = page_of(model_config=MODEL, model_tree=nanogpt_tree)
    assert 'data-testid="module-root"' in html and 'data-testid="module-transformer-h-1-mlp-c_fc"' in html
    assert "28,576 params" in item(html, "module-root")


def test_nanogpt_blocks_show_their_parts_and_attention_its_heads(page_of, nanogpt_tree):
    html = page_of(model_tree=nanogpt_tree)
    block = item(html, "module-transformer-h-1")
    assert re.findall(r'<span class="chip">(\w+)</span>', block) == ["norm", "attention", "norm", "mlp"]
    attention = item(html, "module-transformer-h-0-attn")
    assert "2 heads \u00d7 16" in attention and attention.count("<i></i>") == 2


def test_the_top_levels_and_the_first_block_are_open_the_other_blocks_closed(page_of, nanogpt_tree):
    html = page_of(model_tree=nanogpt_tree)
    assert "<details open>" in item(html, "module-transformer-h")
    assert "<details open>" in item(html, "module-transformer-h-0")
    assert "<details>" in item(html, "module-transformer-h-1")


def test_a_tied_weight_says_where_it_is_counted(page_of, nanogpt_tree):
    row = item(page_of(model_tree=nanogpt_tree), "module-lm_head")
    assert "0 params" in row and "weight 65 \u00d7 32 (tied to transformer.wte.weight)" in row


def test_names_from_the_loop_are_escaped():
    tree = {"name": "", "type": "<script>x</script>", "kind": "model", "parameters": 1,
            "children": [{"name": "a.<b>", "type": "T", "kind": "module", "parameters": 1}]}
    html = model_tree(tree)
    assert "<script>x" not in html and "&lt;script&gt;x" in html and "&lt;b&gt;" in html


def test_cut_subtrees_say_how_many_modules_are_not_shown():
    tree = {"name": "", "type": "Seq", "kind": "model", "parameters": 9, "omitted": 41, "children": [
        {"name": "0", "type": "Linear", "kind": "linear", "parameters": 9}]}
    assert "41 more modules not shown" in model_tree(tree)


def test_a_malformed_tree_costs_the_tree_only_and_is_counted(recording):
    monitor = recording()
    monitor.run_started(max_iterations=10, model_tree={"name": "", "children": ["not a module"]})
    html = rendered(monitor)
    assert '<ul class="tree" id="model-tree" data-testid="model-tree" aria-label="modules of the model"></ul>' in html
    assert read_back(monitor).value("nanogpt_exporter_errors_total", run_id="page", rank="0") == 1


def test_the_summary_names_the_model_and_what_its_config_says():
    assert model_summary({"n_layer": 2, "n_head": 4}, {"type": "GPT2LMHeadModel"}) == \
        "GPT2LMHeadModel \u00b7 2 layers \u00b7 4 heads"
    assert model_summary({}, None) == "The model is described once training starts."


def test_a_layer_is_named_with_its_list_and_a_part_by_its_own_name(page_of, nanogpt_tree):
    html = page_of(model_tree=nanogpt_tree)
    assert '<span class="mname">h.0</span>' in item(html, "module-transformer-h-0")
    assert '<span class="mname">ln_1</span>' in item(html, "module-transformer-h-0-ln_1")


def first_history(html: str) -> str:
    match = re.search(r'<script type="application/json" id="first-history">(.*?)</script>', html, re.DOTALL)
    assert match, "no first-history data block"
    return match.group(1)


def test_the_page_carries_the_overview_of_its_first_chart_as_api_history_gives_it(recording):
    monitor = recording()
    for i in range(5_000):
        monitor.log(iteration=i, loss=3.0 - i / 5_000, timestamp=1_700_000_000.0 + i)
    carried = json.loads(first_history(rendered(monitor)))
    served = json.loads(read_back(monitor).view(0).history.to_json("page", 0, layout="columns", names=CHART_FIELDS,
                                                points=FIRST_OVERVIEW_POINTS))
    assert carried == served and len(carried["iteration"]) < 5_000 and carried["iteration"][-1] == 4_999


def test_no_run_id_can_end_the_data_block_early(recording):
    monitor = recording("</script><script>alert(1)</script>")
    monitor.log(iteration=1, loss=2.0)
    block = first_history(rendered(monitor))
    assert "<" not in block and json.loads(block)["run_id"] == "</script><script>alert(1)</script>"


def test_the_page_script_asks_for_the_fields_the_page_carries():
    declared = re.search(r'const FIELDS = "([a-z_,]+)";', TEMPLATE_PATH.read_text()).group(1)
    assert tuple(declared.split(",")) == CHART_FIELDS  # a zoom merges into what the first chart drew


def test_figures_the_run_has_not_reported_are_a_dash_not_a_guess(page_of):
    html = page_of()  # no dataset, device, loss or MFU reported yet
    for fig in ("dataset", "device"):
        assert re.search(rf'<span data-fig="{fig}">\u2013</span>', html), fig
    assert re.search(r'data-fig="mfu">\u2013</dd>', html)


def figure(html: str, testid: str) -> str:
    """The text a browser without JavaScript shows for one figure (its markup stripped)."""
    match = re.search(rf'<dd data-testid="{testid}"[^>]*>(.*?)</dd>', html)
    assert match, f"no {testid} on the page"
    return re.sub(r"<[^>]+>", "", match.group(1))


def test_goodput_reads_the_step_share_beside_the_phase_that_took_most_of_the_rest(tmp_path):
    monitor = TrainingMonitor(run_id="page", rank=0, directory=tmp_path / "run", startup_since=1000.0)
    monitor.run_started(max_iterations=1000)
    monitor.iteration(0, 64, timestamp=1020.0)  # 20 s of startup
    for i in range(1, 101):
        monitor.iteration(i, 64, timestamp=1020.0 + i, data_seconds=0.25)
    assert figure(rendered(monitor), "fig-goodput") == "62.5 % \u00b7 data wait 20.8 %"  # 75, 25 of 120 s


def test_the_last_spikes_say_where_they_were_and_how_far_out(tmp_path):
    monitor = TrainingMonitor(run_id="page", rank=0, directory=tmp_path / "run", spike_window=16)
    monitor.run_started(max_iterations=1000)
    for i in range(20):
        monitor.log(iteration=i * 10, loss=2.0 + (0.01 if i % 2 else -0.01), lr=1e-3, grad_norm=1.0)
    monitor.log(iteration=1230, loss=2.5, lr=1e-3, grad_norm=1.0)
    html = rendered(monitor)
    sigmas = read_back(monitor).view(0).status()["last_loss_spike"]["sigmas"]
    assert figure(html, "fig-loss_spike") == f"it 1,230 ({sigmas:.1f}\u03c3)"
    assert figure(html, "fig-grad_norm_spike") == "\u2013"  # a grad norm without spread: never a spike


def test_goodput_and_spikes_are_a_dash_before_the_run_counted_any(page_of):
    html = page_of()
    assert figure(html, "fig-goodput") == "\u2013 "  # and nothing beside it
    assert figure(html, "fig-loss_spike") == figure(html, "fig-grad_norm_spike") == "\u2013"


def test_the_largest_other_phase_is_left_out_when_every_second_was_a_step():
    assert fmt_largest_other_phase({"startup": 0.0, "step": 5.0, "data_wait": 0.0}) == ""
    assert fmt_largest_other_phase(None) == ""
    assert fmt_largest_other_phase({"step": 1.0, "eval": 1.0, "checkpoint": 1.0}) == "\u00b7 eval 33.3 %"  # the first
