"""nanogpt_monitor.model_view: any torch.nn.Module as the plain tree and components the exporter shows.

References: `named_parameters()` (the model's own count, shared tensors once) and
nanoGPT's GPT.parameter_counts(); models from transformers are built from tiny
configs, never downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch

from nanogpt.model import GPT, GPTConfig
from nanogpt_monitor.model_view import components, config_fields, describe
from tests.support.models import gpt2, llama

NANO = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)


def named_parameters_total(model) -> int:
    return sum(p.numel() for _, p in model.named_parameters())  # each shared tensor once


def nodes(tree: dict):
    yield tree
    for child in tree.get("children", []):
        yield from nodes(child)


def by_name(tree: dict) -> dict[str, dict]:
    return {node["name"]: node for node in nodes(tree)}


MODELS = {
    "gpt2 (tied)": lambda: gpt2(True), "gpt2 (untied)": lambda: gpt2(False),
    "llama": lambda: llama(False), "llama (tied)": lambda: llama(True), "nanogpt": lambda: GPT(GPTConfig(**NANO)),
}


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_the_root_count_is_the_named_parameters_total(make):
    model = make()
    assert describe(model)["parameters"] == named_parameters_total(model)


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_every_subtree_counts_its_own_parameters_plus_its_children(make):
    for node in nodes(describe(make())):
        own = sum(torch.Size(shape).numel() for name, shape in node.get("shapes", {}).items()
                  if name not in node.get("tied", {}))
        assert node["parameters"] == own + sum(c["parameters"] for c in node.get("children", [])), node["name"]


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
def test_components_add_up_to_the_total(make):
    found = components(describe(make()))
    assert sum(v for k, v in found.items() if k != "total") == found["total"]


@pytest.mark.parametrize("make, head, embedding", [(lambda: gpt2(True), "lm_head", "transformer.wte"),
                                                   (lambda: llama(True), "lm_head", "model.embed_tokens"),
                                                   (lambda: GPT(GPTConfig(**NANO)), "lm_head", "transformer.wte")],
                         ids=["gpt2", "llama", "nanogpt"])
def test_a_tied_output_head_is_counted_once_under_the_embedding(make, head, embedding):
    model = make()
    tree = by_name(describe(model))
    assert tree[head]["parameters"] == 0
    assert tree[head]["tied"] == {"weight": f"{embedding}.weight"}
    weight = model.get_submodule(embedding).weight
    assert model.get_submodule(head).weight is weight
    assert tree[head]["shapes"]["weight"] == list(weight.shape)
    assert tree[embedding]["parameters"] == weight.numel()


def test_an_untied_head_has_its_own_parameters():
    tree = by_name(describe(llama(False)))
    assert tree["lm_head"]["parameters"] == 50 * 16 and "tied" not in tree["lm_head"]


def test_gpt2_shows_its_blocks_attention_heads_and_mlps():
    tree = by_name(describe(gpt2()))
    assert [tree[f"transformer.h.{i}"]["kind"] for i in range(2)] == ["block", "block"]
    attention = tree["transformer.h.0.attn"]
    assert (attention["kind"], attention["heads"], attention["head_size"]) == ("attention", 2, 8)
    assert tree["transformer.h.0.mlp"]["kind"] == "mlp"
    assert tree["transformer.h.0.mlp.c_fc"]["shapes"]["weight"] == [16, 64]  # Conv1D: (in, out)


def test_llama_shows_grouped_query_attention_and_rms_norms():
    tree = by_name(describe(llama()))
    attention = tree["model.layers.1.self_attn"]
    assert (attention["heads"], attention["kv_heads"], attention["head_size"]) == (4, 2, 4)
    assert tree["model.layers.1.input_layernorm"]["kind"] == "norm"
    assert tree["model.layers.1.mlp"]["kind"] == "mlp"


def test_nanogpt_keeps_its_blocks_heads_and_mlps():
    model = GPT(GPTConfig(**NANO))
    tree = by_name(describe(model))
    counts = model.parameter_counts()
    assert sum(tree[f"transformer.h.{i}.attn"]["parameters"] for i in range(2)) == counts["attention"]
    assert sum(tree[f"transformer.h.{i}.mlp"]["parameters"] for i in range(2)) == counts["mlp"]
    assert tree["transformer.h.1.attn"]["heads"] == 2 and tree["transformer.h.1.attn"]["head_size"] == 16
    assert tree["transformer.wpe"]["parameters"] == counts["position_embedding"]


def test_components_open_wrappers_but_not_the_list_of_layers():
    assert list(components(describe(gpt2()))) == [
        "total", "transformer.wte", "transformer.wpe", "transformer.h", "transformer.ln_f", "lm_head"]
    assert list(components(describe(llama()))) == ["total", "model.embed_tokens", "model.layers", "model.norm",
                                                   "lm_head"]


def test_parameters_a_module_holds_itself_are_components_by_name():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.body = torch.nn.Linear(3, 3)

    assert components(describe(Scaled())) == {"total": 15, "scale": 3, "body": 12}


def test_a_huge_model_is_cut_at_max_nodes_and_keeps_its_count():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(50)])
    tree = describe(model, max_nodes=10)
    assert tree["parameters"] == named_parameters_total(model) == 300
    assert len(list(nodes(tree))) == 10 and tree["omitted"] == 41


def test_the_tree_is_plain_json_data():
    tree = describe(llama(True))
    assert json.loads(json.dumps(tree)) == tree


def test_config_fields_use_nanogpt_names():
    assert config_fields(gpt2()) == {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32, "vocab_size": 50,
                                     "dropout": 0.1, "model_type": "gpt2"}
    assert config_fields(torch.nn.Linear(2, 2)) == {}
