"""The model's architecture as plain data, for /api/model and the page's diagram.

Derived from the model config alone (nanoGPT's GPT: token and position
embeddings, n_layer blocks of ln_1, attention, ln_2, MLP, then ln_f and an
lm_head tied to the token embedding), so the exporter needs no torch. Shapes
are torch weight shapes: nn.Linear(in, out).weight is (out, in).
"""

from __future__ import annotations

from typing import Any


def _module(name: str, kind: str, params: dict[str, list[int]], **extra: Any) -> dict:
    count = 0
    for shape in params.values():
        size = 1
        for dim in shape:
            size *= dim
        count += size
    return {"name": name, "kind": kind, "shapes": params, "parameters": count, **extra}


def _linear(name: str, fan_in: int, fan_out: int, bias: bool) -> dict:
    params = {"weight": [fan_out, fan_in]}
    if bias:
        params["bias"] = [fan_out]
    return _module(name, "linear", params)


def _layernorm(name: str, n_embd: int, bias: bool) -> dict:
    return _module(name, "layernorm", {"weight": [n_embd], **({"bias": [n_embd]} if bias else {})})


def layers(model_config: dict) -> list[dict]:
    """The model's modules in forward order, each with its weight shapes and parameter count.

    Blocks nest their parts under "children"; the lm_head reports 0 own parameters
    when tied (its matrix is counted once, under the token embedding)."""
    if not model_config:
        return []
    n_layer, n_head, n_embd = (int(model_config[k]) for k in ("n_layer", "n_head", "n_embd"))
    vocab, block_size = int(model_config["vocab_size"]), int(model_config["block_size"])
    bias = bool(model_config.get("bias", True))
    result = [
        _module("transformer.wte", "embedding", {"weight": [vocab, n_embd]}),
        _module("transformer.wpe", "embedding", {"weight": [block_size, n_embd]}),
    ]
    for i in range(n_layer):
        prefix = f"transformer.h.{i}"
        children = [
            _layernorm(f"{prefix}.ln_1", n_embd, bias),
            {**_module(f"{prefix}.attn", "attention", {}), "n_head": n_head, "head_size": n_embd // n_head,
             "children": [_linear(f"{prefix}.attn.c_attn", n_embd, 3 * n_embd, bias),
                          _linear(f"{prefix}.attn.c_proj", n_embd, n_embd, bias)]},
            _layernorm(f"{prefix}.ln_2", n_embd, bias),
            {**_module(f"{prefix}.mlp", "mlp", {}),
             "children": [_linear(f"{prefix}.mlp.c_fc", n_embd, 4 * n_embd, bias),
                          _linear(f"{prefix}.mlp.c_proj", 4 * n_embd, n_embd, bias)]},
        ]
        for child in children:
            if "children" in child:
                child["parameters"] = sum(c["parameters"] for c in child["children"])
        result.append({"name": prefix, "kind": "block", "index": i, "children": children,
                       "parameters": sum(c["parameters"] for c in children)})
    result.append(_layernorm("transformer.ln_f", n_embd, bias))
    result.append({**_module("lm_head", "linear", {"weight": [vocab, n_embd]}),
                   "parameters": 0, "tied_to": "transformer.wte"})
    return result


def total_parameters(model_layers: list[dict]) -> int:
    """Sum of the top-level modules' own parameter counts (tied weights once)."""
    return sum(layer["parameters"] for layer in model_layers)
