"""Device choices: which device and dtype, the autocast context, the known peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import re
from typing import Optional

import torch

__all__ = ["resolve_device", "resolve_dtype", "autocast", "known_peak_flops", "synchronize", "memory_report",
           "out_of_memory_reason"]

# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets, FLOP/s.
# Matched as substrings of torch.cuda.get_device_name(), first match wins. These are the
# only peaks the project knows: an MFU against any other device (every CPU, a GPU not
# listed, float32 training) would be a guess, so it is no figure unless --peak_flops says.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("4090", 165e12),
    ("3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def resolve_device(name: str) -> torch.device:
    """'auto' becomes cuda when present, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> str:
    """The dtype actually trained in: float32 on CPU (as nanoGPT), bf16 if supported on CUDA for 'auto'."""
    if device.type != "cuda":
        return "float32"
    if name == "auto":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return name


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA for bf16/fp16; plain float32 elsewhere."""
    if device.type != "cuda" or dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype))


def known_peak_flops(device: torch.device, dtype: str) -> Optional[float]:
    """The table's peak FLOP/s for training in `dtype` on `device`, or None where it is not known."""
    if device.type != "cuda" or dtype not in ("bfloat16", "float16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS if key in name), None)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU, where work is already synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_report(device: torch.device) -> str:
    """"allocated A GiB, reserved R GiB, device total T GiB" of a CUDA device (n/a elsewhere)."""
    if device.type != "cuda":
        return f"allocated n/a, reserved n/a, device total n/a (device {device}, not CUDA)"
    gib = 2**30
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    total = torch.cuda.get_device_properties(device).total_memory
    return f"allocated {allocated / gib:.2f} GiB, reserved {reserved / gib:.2f} GiB, device total {total / gib:.2f} GiB"


def out_of_memory_reason(error: Exception, device: torch.device, iteration: int, batch: tuple[int, int],
                         micro_steps: int) -> str:
    """One line for a CUDA out-of-memory error: where, how much was asked, the memory figures,
    the batch shape (batch_size, block_size) and what to change."""
    asked = re.search(r"Tried to allocate ([\d.]+ \w+)", str(error))
    return (f"CUDA out of memory at iteration {iteration}{' allocating ' + asked.group(1) if asked else ''}: "
            f"{memory_report(device)}; batch {batch[0]}x{batch[1]} tokens x {micro_steps} micro-steps; lower "
            "batch_size (raise gradient_accumulation_steps to keep tokens per iteration) or block_size")
