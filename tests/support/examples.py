"""The runnable examples (examples/*.py) as real processes for end-to-end tests.

Each runs with this checkout's packages first on its path (PYTHONPATH=REPO, so the
code under test is this tree's, installed or not), offline for the Hugging Face hub,
one thread, and its output in the test's temp dir.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.support.procs import REPO, ServesMetrics

EXAMPLES = ("plain_pytorch", "hf_trainer", "lightning_module")


class Example(ServesMetrics):
    """`python examples/<name>.py --out-dir=... args...`, waiting for its metrics URL."""

    def __init__(self, workdir: Path, name: str, *args: str, wait_for_metrics: bool = True,
                 launcher: tuple[str, ...] = (sys.executable,)):
        """`launcher`: what runs the script, e.g. torchrun's command line for several ranks."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.what = f"examples/{name}.py"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
                   str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [*launcher, str(REPO / "examples" / f"{name}.py"), f"--out-dir={workdir / 'out'}", *args]
        super().__init__(command, workdir / f"{name}-{time.monotonic_ns()}.log", env=env, cwd=REPO)
        if wait_for_metrics:
            try:
                self.wait_for_metrics(timeout=120)  # importing transformers or lightning takes a while
            except BaseException:
                self.stop()  # the caller never got the process to stop it
                raise
