#!/usr/bin/env bash
# The first run on a real NVIDIA GPU, as one command (under 5 minutes on one GPU):
#   bash scripts/gpu_check.sh [--iters 300] [--data-file PATH] [-- extra trainer flags]
# Prints a table: one row per CUDA claim (bf16 / fp16+GradScaler training, no host-device sync
# between log points, GPU metrics, metrics overhead, MFU, CUDA OOM) with its figure; exit 0 when
# every claim holds, 1 when one does not. Without a CUDA device it says so and exits 0.
# The output format is described in docs/gpus.md ("Checking a real GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m bench.gpu_check "$@"
