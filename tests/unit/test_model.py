"""GPT: nanoGPT's shapes, initial loss, parameter accounting, optimizer groups, sampling."""

import math

import pytest
import torch

from nanogpt.model import GPT, GPTConfig

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0)


def make(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**SMALL, **overrides}))


def test_forward_with_targets_gives_logits_per_position_and_a_scalar_loss():
    model = make()
    idx = torch.randint(65, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 65)
    assert loss.shape == ()


def test_forward_without_targets_gives_only_the_last_positions_logits():
    logits, loss = make()(torch.randint(65, (3, 10)))
    assert logits.shape == (3, 1, 65)
    assert loss is None


@pytest.mark.parametrize("vocab_size", [65, 256])
def test_loss_at_init_is_close_to_uniform_guessing(vocab_size):
    model = make(vocab_size=vocab_size)
    idx = torch.randint(vocab_size, (8, 16))
    _, loss = model(idx, torch.randint(vocab_size, (8, 16)))
    assert loss.item() == pytest.approx(math.log(vocab_size), abs=0.1)


def test_a_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size is 16"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_n_embd_not_divisible_by_n_head_is_refused():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        make(n_embd=30, n_head=4)


def test_token_embedding_and_lm_head_share_one_matrix():
    model = make()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_residual_projections_get_the_scaled_init():
    model = make(n_layer=4, n_embd=128, n_head=4)
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_counts_add_up_and_count_tied_weights_once(bias):
    model = make(bias=bias)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert counts["lm_head"] == 0  # its weight is the token embedding
    assert counts["token_embedding"] == 65 * 32
    assert counts["position_embedding"] == 16 * 32
    assert counts["mlp"] == 2 * (32 * 128 + 128 * 32 + (128 + 32 if bias else 0))
    assert counts["attention"] == 2 * (32 * 96 + 32 * 32 + (96 + 32 if bias else 0))
    assert counts["layernorm"] == (2 * 2 + 1) * 32 * (2 if bias else 1)


def test_weight_decay_applies_only_to_matrices():
    model = make(bias=True)
    decayed, plain = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_crop_block_size_shortens_the_context():
    model = make()
    model.crop_block_size(8)
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 32)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_generate_appends_tokens_and_crops_its_context_to_block_size():
    model = make().eval()
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), max_new_tokens=20)
    assert out.shape == (2, 21)
    assert 0 <= out.min() and out.max() < 65


def test_generate_with_top_k_1_is_greedy():
    model = make().eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    out = model.generate(start, max_new_tokens=5, top_k=1)
    idx = start
    for _ in range(5):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def test_estimate_mfu_is_the_palm_flop_count_over_peak():
    model = make()
    n = model.get_num_params()
    flops_per_iter = (6 * n + 12 * 2 * 2 * 16 * 16) * 16 * 4  # (6N + 12LHQT) * T * fwdbwd
    assert model.estimate_mfu(4, 0.5, 1e12) == pytest.approx(flops_per_iter / 0.5 / 1e12)
