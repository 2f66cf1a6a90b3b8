"""Text -> cached character-level token arrays -> random training batches.

Character level, as nanoGPT's shakespeare_char: the vocabulary is the sorted
set of characters, the first 90% of the text trains and the last 10%
validates. The encoded arrays are cached on disk keyed by the text's SHA-256,
so a second run on the same text starts at once; cache writes are atomic
(nanogpt/atomic.py), so concurrent DDP ranks cannot see half a file.
Deliberately not here: BPE/tiktoken tokenisation and nanoGPT's openwebtext.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanogpt.atomic import atomic_write

__all__ = ["CharDataset", "DataError", "load_dataset", "read_text", "default_corpus", "get_batch"]

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATASETS = ("python-docs", "shakespeare")


class DataError(ValueError):
    """Unusable training text; the message is one line that names the file or dataset."""


@dataclass(frozen=True)
class CharDataset:
    """Encoded train/val token arrays (uint16 or uint32, maybe memory-mapped) and their vocabulary."""

    name: str  # 'python-docs', 'shakespeare', or the data file's path
    chars: tuple[str, ...]  # token id i is the character chars[i]
    train: np.ndarray  # (N_train,) token ids
    val: np.ndarray  # (N_val,) token ids

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; a character outside the vocabulary is a DataError."""
        stoi = {c: i for i, c in enumerate(self.chars)}
        missing = sorted(set(text) - stoi.keys())
        if missing:
            raise DataError(f"characters {''.join(missing)!r} are not in the vocabulary")
        return [stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def default_corpus() -> str:
    """The offline default: Python's own language-reference documentation.

    pydoc_data.topics ships with CPython (it backs `help('assert')` etc.): ~465 kB
    of English prose and code, UTF-8, fixed for a given Python version. Topics are
    joined in sorted order so the text is deterministic.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a data file, or a DataError saying why it is unusable."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"data file {str(path)!r} is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(path)!r} is not UTF-8 text (bad byte at offset {e.start})") from None


def _fetch_shakespeare(cache_dir: Path) -> str:
    """Tiny Shakespeare, downloaded once into the cache dir."""
    path = cache_dir / "tinyshakespeare.txt"
    if not path.exists():
        log.info("downloading tiny Shakespeare from %s", SHAKESPEARE_URL)
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
                raw = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise DataError(
                f"cannot download tiny Shakespeare ({getattr(e, 'reason', e)}); offline? "
                f"save {SHAKESPEARE_URL} somewhere and pass --data-file PATH"
            ) from None
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(raw)
    return read_text(path)


def cache_dir_default() -> Path:
    """$NANOGPT_CACHE_DIR, else $XDG_CACHE_HOME/nanogpt-monitor, else ~/.cache/nanogpt-monitor."""
    if os.environ.get("NANOGPT_CACHE_DIR"):
        return Path(os.environ["NANOGPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanogpt-monitor"


def _encode(text: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted vocabulary and the token ids of text, vectorised (no per-character Python loop)."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniques, ids = np.unique(codepoints, return_inverse=True)  # uniques sorted = sorted(set(text))
    dtype = np.uint16 if len(uniques) <= 2**16 else np.uint32
    return tuple(chr(c) for c in uniques), ids.astype(dtype)


def _cached_arrays(text: str, cache_dir: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(chars, train, val) from the cache, encoding and caching them on a miss."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    entry = cache_dir / digest
    meta_path = entry / "meta.json"
    if meta_path.exists():  # meta.json is written last: its presence means the entry is complete
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        arrays = [np.memmap(entry / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val")]
        return tuple(meta["chars"]), arrays[0], arrays[1]
    chars, ids = _encode(text)
    n = int(len(ids) * 0.9)
    train, val = ids[:n], ids[n:]
    meta = {"chars": list(chars), "dtype": str(ids.dtype), "train": len(train), "val": len(val)}
    files = [("train.bin", train.tobytes()), ("val.bin", val.tobytes()),
             ("meta.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))]  # meta last: see above
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name, content in files:
            with atomic_write(entry / name) as f:
                f.write(content)
    except OSError as e:  # a read-only or full cache only costs the next run the encoding time
        log.warning("could not cache the encoded data in %s: %s", entry, e)
    return chars, train, val


def load_dataset(
    dataset: str, data_file: str, block_size: int, cache_dir: str | os.PathLike | None = None
) -> CharDataset:
    """Load data_file if given, else the named dataset; both splits must hold block_size + 1 tokens.

    cache_dir: where encoded arrays are cached; empty or None means cache_dir_default().
    """
    cache_dir = Path(cache_dir) if cache_dir else cache_dir_default()
    if data_file:
        name, text = data_file, read_text(data_file)
    elif dataset == "python-docs":
        name, text = dataset, default_corpus()
    elif dataset in ("shakespeare", "shakespeare_char"):
        name, text = "shakespeare", _fetch_shakespeare(cache_dir)
    else:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)} (or pass --data-file PATH)")
    chars, train, val = _cached_arrays(text, cache_dir)
    shortest = min(len(train), len(val))
    if shortest < block_size + 1:
        raise DataError(
            f"{name!r} has {len(train) + len(val)} characters: too short for block_size={block_size} "
            f"(its 10% validation split has {len(val)}, needs at least {block_size + 1})"
        )
    return CharDataset(name=name, chars=chars, train=train, val=val)


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch like nanoGPT's: x (B, T) and the next-token targets y (B, T), int64.

    Offsets come from torch's global generator, so the batches follow the seed.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,)).numpy()
    rows = torch.from_numpy(data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    x, y = rows[:, :-1], rows[:, 1:]
    if device.type == "cuda":
        # pinned memory lets the copy run asynchronously (non_blocking) with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)
