"""Checkpoints: nanoGPT's dict, written atomically, read back with clear errors.

A checkpoint holds {model, optimizer, model_args, iter_num, best_val_loss,
config} as nanoGPT's does, plus `vocab` (the characters, so sampling needs no
data files). Saving writes a temp file in the same directory, fsyncs it and
renames it over ckpt.pt (nanogpt/atomic.py): a kill or a full disk during a save leaves the
previous checkpoint whole, and the temp file such a kill leaves behind is
removed by the next save.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from nanogpt.atomic import atomic_write, temp_files

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "CKPT_NAME", "MODEL_SHAPE_KEYS"]

CKPT_NAME = "ckpt.pt"
REQUIRED_KEYS = ("model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "vocab")
MODEL_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint; the message is one line naming the file."""


def save_checkpoint(
    checkpoint: dict[str, Any], path: str | os.PathLike, save: Callable[[Any, Any], None] = torch.save
) -> None:
    """Write checkpoint to path atomically (temp file + fsync + rename); `save` is for tests."""
    for stale in temp_files(path):  # left by a save that was killed (one writer per dir)
        stale.unlink(missing_ok=True)
    with atomic_write(path) as f:
        save(checkpoint, f)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint; any problem is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        # weights_only: a checkpoint is tensors and plain values; never unpickle arbitrary objects
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable: {reason}") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
        raise CheckpointError(f"checkpoint {str(path)!r} is not a nanogpt checkpoint (missing {', '.join(missing)})")
    # torch.compile'd models save their weights under an '_orig_mod.' prefix
    checkpoint["model"] = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    return checkpoint


def check_model_args(checkpoint: dict[str, Any], wanted: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to resume into a different model shape (or vocabulary) than the checkpoint's."""
    have = checkpoint["model_args"]
    for key in MODEL_SHAPE_KEYS:
        if have.get(key) != wanted[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has {key}={have.get(key)!r} but this run has {key}={wanted[key]!r}: "
                f"resume with the checkpoint's model shape and data"
            )
