"""`nanogpt-sample`: generate text from a trained checkpoint (after nanoGPT's sample.py).

    nanogpt-sample --out_dir out --start "ROMEO:" --num_samples 3 --max_new_tokens 200

The checkpoint carries its vocabulary, so no data files are needed.
`--start FILE:prompt.txt` reads the prompt from a file, as in nanoGPT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from nanogpt.config import ConfigError, OneLineParser

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="nanogpt-sample", description="Generate text from a nanogpt checkpoint.")
    p.add_argument("--out_dir", "--out-dir", default="out", help="directory holding ckpt.pt (default: out)")
    p.add_argument("--start", default="\n", help="prompt text, or FILE:path to read it (default: newline)")
    p.add_argument("--num_samples", "--num-samples", type=int, default=10)
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="<1 sharper, >1 more random")
    p.add_argument("--top_k", "--top-k", type=int, default=200, help="sample from the k likeliest tokens only")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print num_samples generations; bad input is one `error:` line and exit code 2."""
    from nanogpt.checkpoint import CheckpointError

    try:
        return _sample(_parser().parse_args(argv))
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _sample(args: argparse.Namespace) -> int:
    if args.num_samples < 1 or args.max_new_tokens < 0 or args.temperature <= 0 or args.top_k < 1:
        raise ConfigError("need num_samples >= 1, max_new_tokens >= 0, temperature > 0 and top_k >= 1")
    start = args.start
    if start.startswith("FILE:"):
        try:
            start = Path(start[5:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read prompt file {start[5:]!r}: {e}") from None

    import torch

    from nanogpt.checkpoint import CKPT_NAME, load_checkpoint
    from nanogpt.device import autocast, resolve_device, resolve_dtype
    from nanogpt.model import GPT, GPTConfig

    device = resolve_device(args.device)
    checkpoint = load_checkpoint(Path(args.out_dir) / CKPT_NAME, device)
    chars = checkpoint["vocab"]
    stoi = {c: i for i, c in enumerate(chars)}
    unknown = sorted(set(start) - stoi.keys())
    if not start or unknown:
        raise ConfigError(f"--start must be non-empty text the model has seen; unknown: {''.join(unknown)!r}")
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    model.eval().to(device)
    x = torch.tensor([stoi[c] for c in start], dtype=torch.long, device=device)[None, ...]  # (1, T)
    with torch.no_grad(), autocast(device, resolve_dtype("auto", device)):
        for _ in range(args.num_samples):
            y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
            print("".join(chars[i] for i in y[0].tolist()))
            print("---------------", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
