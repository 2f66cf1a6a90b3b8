"""The real trainer under torch.cuda.set_sync_debug_mode("warn"), each host-device sync attributed
to the iteration it happened in. Used by bench/gpu_check.py; not a test.

    python -m bench.sync_probe OUT.json <nanogpt-train flags>

Runs nanogpt.cli.main in this process. The loop calls nanogpt.train.get_lr once at the top of
every iteration, so wrapping it tells which iteration is running when CUDA warns "called a
synchronizing CUDA operation" (from any thread: a scrape that synchronised would show up too).
Writes {"exit", "cuda", "iterations", "syncs": [{"iteration", "site"}]} to OUT.json. Without
CUDA it runs the same way with nothing to warn (so the attribution can be checked on CPU).
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
import warnings
from pathlib import Path

SYNC_WARNING = "synchronizing CUDA operation"


class SyncLog:
    """Which iteration is running, and every sync warning seen, with the trainer's line that caused it."""

    def __init__(self) -> None:
        self.iteration: int | None = None
        self.iterations: list[int] = []
        self.syncs: list[dict] = []
        self._lock = threading.Lock()

    def started(self, iteration: int) -> None:
        self.iteration = iteration
        self.iterations.append(iteration)

    def warned(self, message, category, filename, lineno, file=None, line=None) -> None:
        """A warnings.showwarning replacement: records sync warnings, shows the others."""
        if SYNC_WARNING not in str(message):
            return _show(message, category, filename, lineno, file, line)
        ours = [f for f in traceback.extract_stack()[:-1] if f"{Path('nanogpt')}/" in f.filename.replace("\\", "/")]
        site = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].line}" if ours else f"{filename}:{lineno}"
        with self._lock:
            self.syncs.append({"iteration": self.iteration, "site": site, "thread": threading.current_thread().name})


_show = warnings.showwarning


def run(out: Path, flags: list[str]) -> int:
    import torch

    import nanogpt.train as train_module
    from nanogpt.cli import main

    log = SyncLog()
    get_lr = train_module.get_lr

    def tracking_get_lr(it, cfg):
        log.started(it)
        return get_lr(it, cfg)

    train_module.get_lr = tracking_get_lr
    warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")  # every one, not once per line
    warnings.showwarning = log.warned
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        code = main(flags)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        train_module.get_lr = get_lr
    out.write_text(json.dumps({"exit": code, "cuda": cuda, "iterations": log.iterations, "syncs": log.syncs}))
    return code


if __name__ == "__main__":
    raise SystemExit(run(Path(sys.argv[1]), sys.argv[2:]))
