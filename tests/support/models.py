"""Tiny Hugging Face models built from configs (never downloaded), for tests that describe or draw them."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def gpt2(tie: bool = True):
    transformers = pytest.importorskip("transformers")
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=50, tie_word_embeddings=tie,
        bos_token_id=0, eos_token_id=0))


def llama(tie: bool = False):
    transformers = pytest.importorskip("transformers")
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=50, max_position_embeddings=32, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0))
