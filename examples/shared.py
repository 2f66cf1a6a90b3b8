"""What the three examples share: their command line, a tiny byte-level corpus and a tiny model.

The corpus is Python's own language reference (`pydoc_data.topics`, shipped with
CPython), read as bytes: no download, no tokenizer, vocabulary 256. Not part of
the package: copy what you need.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

VOCAB_SIZE = 256  # bytes


def parse_flags(description: str, argv=None) -> argparse.Namespace:
    """The flags every example takes (the metrics ones as nanogpt-train names them)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8000, help="the node's monitor port; 0 = a free one")
    p.add_argument("--metrics-linger", type=float, default=0.0, metavar="SECONDS",
                   help="keep serving metrics this long after training, so the end gets scraped")
    p.add_argument("--run-id", default=None, help="default: generated")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--lr-zero-after", type=int, default=-1, metavar="N",
                   help="learning rate 0 from step N on, to provoke a loss plateau (-1: never)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--out-dir", default="out-example")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    for name in ("max_steps", "log_every", "eval_every", "save_every", "block_size", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def lr_factor(lr_zero_after: int):
    """LambdaLR factor: 1, then 0 from step `lr_zero_after` on (when >= 0)."""
    return lambda step: 0.0 if 0 <= lr_zero_after <= step else 1.0


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) byte tensors of the language reference, 90/10."""
    from pydoc_data.topics import topics

    data = torch.tensor(list("\n".join(topics.values()).encode("utf-8")), dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


class Windows(torch.utils.data.Dataset):
    """`length` windows of block_size + 1 bytes at random offsets: (input, target) pairs. With a
    seed, window i is always the same; without, each read draws anew (as nanoGPT's estimate_loss
    samples fresh batches at every evaluation)."""

    def __init__(self, data: torch.Tensor, block_size: int, length: int, seed: int | None = 0):
        self.data, self.block_size, self.length, self.seed = data, block_size, length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i) if self.seed is not None else None
        start = int(torch.randint(0, len(self.data) - self.block_size - 1, (1,), generator=g))
        return self.data[start: start + self.block_size + 1]  # (T + 1,): input [:-1], target [1:]


class TinyLM(nn.Module):
    """A 2-layer causal transformer over bytes, its output head tied to the token embedding."""

    def __init__(self, block_size: int, n_embd: int = 64, n_head: int = 4, n_layer: int = 2):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB_SIZE, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) byte ids -> logits (B, T, 256)."""
        t = idx.size(1)
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        return self.head(self.norm(self.layers(x, mask=mask, is_causal=True)))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy of a (B, T + 1) batch."""
        logits = self(batch[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))

