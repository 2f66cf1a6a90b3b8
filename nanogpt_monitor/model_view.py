"""Any torch.nn.Module as plain data: the module tree the exporter shows, and its top-level components.

`describe(model)` walks `named_children()` and each module's own parameters and returns nested
dicts of str, int and lists only (JSON as is), so the exporter, which never imports torch, can
serve and draw it. Every node carries the module's name (its dotted path, "" for the root), type,
a coarse `kind` (embedding, attention, mlp, norm, linear, block, list, ...), the shapes of the
parameters it registers itself, and `parameters`: the elements of every parameter in its subtree,
each counted once in the whole tree. A parameter reachable under two names (a tied embedding and
lm_head) is counted where `named_parameters()` meets it first and marked `tied` at the other
place, so the root's count equals `sum(p.numel() for p in model.parameters())`. Attention modules
also carry their head count and head size when the module says them (nanoGPT's `n_head`, Hugging
Face's `num_heads` or `config`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["describe", "components", "config_fields", "MAX_NODES"]

MAX_NODES = 2000  # a page and a JSON answer stay small even for a model of hundreds of layers
MAX_COMPONENT_DEPTH = 3  # how far components() descends into wrapper modules (labels stay few)

# (substring of the lower-cased type name, kind); the first match wins, so order matters.
_KINDS = (
    ("embedding", "embedding"), ("attention", "attention"), ("attn", "attention"), ("mlp", "mlp"),
    ("feedforward", "mlp"), ("ffn", "mlp"), ("norm", "norm"), ("dropout", "dropout"), ("conv1d", "linear"),
    ("linear", "linear"), ("modulelist", "list"), ("sequential", "list"), ("moduledict", "container"),
    ("block", "block"), ("layer", "block"),
)
_HEAD_ATTRIBUTES = ("n_head", "num_heads", "num_attention_heads", "n_heads")
_HEAD_SIZE_ATTRIBUTES = ("head_dim", "head_size")


def _kind(module, is_root: bool) -> str:
    if is_root:
        return "model"
    name = type(module).__name__.lower()
    return next((kind for key, kind in _KINDS if key in name), "module")


def _int_attribute(obj: Any, names: tuple[str, ...]) -> Optional[int]:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads(module) -> dict:
    """{"heads": n, "head_size": d[, "kv_heads": k]} as far as the attention module says them."""
    config = getattr(module, "config", None)
    heads = _int_attribute(module, _HEAD_ATTRIBUTES) or _int_attribute(config, _HEAD_ATTRIBUTES)
    if not heads:
        return {}
    info = {"heads": heads}
    size = _int_attribute(module, _HEAD_SIZE_ATTRIBUTES) or _int_attribute(config, _HEAD_SIZE_ATTRIBUTES)
    width = _int_attribute(module, ("n_embd", "embed_dim", "hidden_size")) or _int_attribute(
        config, ("n_embd", "hidden_size"))
    if not size and width and width % heads == 0:
        size = width // heads
    if size:
        info["head_size"] = size
    kv_heads = _int_attribute(config, ("num_key_value_heads",))
    if kv_heads and kv_heads != heads:
        info["kv_heads"] = kv_heads
    return info


def describe(model, max_nodes: int = MAX_NODES) -> dict:
    """The module tree of `model` (any torch.nn.Module) as nested plain dicts; see the module doc.

    Past `max_nodes` modules the remaining subtrees are cut: their parents keep the full parameter
    count and say how many modules were left out in `omitted`."""
    owner: dict[int, str] = {}  # id(parameter) -> the name it was first met under
    for name, p in model.named_parameters(remove_duplicate=False):
        owner.setdefault(id(p), name)
    budget = [max_nodes]

    def node(module, name: str, is_root: bool) -> dict:
        budget[0] -= 1
        kind = _kind(module, is_root)
        shapes, tied, own = {}, {}, 0
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            shapes[pname] = list(p.shape)
            if owner.get(id(p)) == full:
                own += p.numel()
            else:
                tied[pname] = owner.get(id(p), "")
        result: dict[str, Any] = {"name": name, "type": type(module).__name__, "kind": kind}
        if shapes:
            result["shapes"] = shapes
        if tied:
            result["tied"] = tied
        if kind == "attention":
            result.update(_heads(module))
        children, omitted, total = [], 0, own
        for cname, child in module.named_children():
            full = f"{name}.{cname}" if name else cname
            if budget[0] > 0:
                described = node(child, full, False)
                children.append(described)
                total += described["parameters"]
            else:
                counted = {id(p) for n, p in child.named_parameters(prefix=full, remove_duplicate=False)
                           if owner.get(id(p)) == n}
                total += sum(p.numel() for p in child.parameters() if id(p) in counted)
                omitted += sum(1 for _ in child.modules())
        result["parameters"] = total
        if children:
            result["children"] = children
        if omitted:
            result["omitted"] = omitted
        return result

    return node(model, "", True)


def _is_wrapper(child: dict, total: int) -> bool:
    """A module worth opening for components: it holds most of the model and is no list of layers."""
    return bool(child.get("children")) and child["kind"] != "list" and child["parameters"] * 2 > total


def components(tree: dict) -> dict[str, int]:
    """{"total": N, "<module path>": count, ...}: the model's top-level parts, counts adding up to N.

    Starts at the root's children and opens wrappers (a module holding most of the parameters,
    like Hugging Face's `transformer` or `model`), at most MAX_COMPONENT_DEPTH deep, never a list
    of layers. Modules without parameters are left out unless tied to one (a tied lm_head is 0)."""
    total = int(tree["parameters"])
    result = {"total": total}

    def visit(node: dict, depth: int) -> None:
        for pname, shape in node.get("shapes", {}).items():  # parameters an opened module holds itself
            if pname not in node.get("tied", {}):
                result[f"{node['name']}.{pname}" if node["name"] else pname] = math.prod(shape)
        for child in node.get("children", []):
            if not child["parameters"] and not child.get("tied"):
                continue
            if depth < MAX_COMPONENT_DEPTH and _is_wrapper(child, total):
                visit(child, depth + 1)
            else:
                result[child["name"]] = int(child["parameters"])

    visit(tree, 1)
    return result


# nanoGPT's field name -> Hugging Face config attributes that mean it (first present wins)
_CONFIG_NAMES = {
    "n_layer": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_head": ("num_attention_heads", "n_head", "num_heads"),
    "n_embd": ("hidden_size", "n_embd", "d_model"),
    "block_size": ("max_position_embeddings", "n_positions", "block_size"),
    "vocab_size": ("vocab_size",),
    "dropout": ("hidden_dropout_prob", "resid_pdrop", "dropout", "attention_dropout"),
}


def config_fields(model) -> dict:
    """nanogpt_model_config's fields read from `model.config` (Hugging Face style), or {} without one."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    fields = {}
    for field, names in _CONFIG_NAMES.items():
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fields[field] = value
                break
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str) and model_type:
        fields["model_type"] = model_type
    return fields
