"""DDP on CPU: two ranks under real torchrun (gloo) end with identical weights."""

import re
import subprocess
import sys

import pytest

from tests.support.procs import REPO
from tests.support.trainer import tiny_flags

pytestmark = pytest.mark.slow


def test_two_cpu_ranks_under_torchrun_end_with_identical_parameters(tmp_path):
    flags = tiny_flags(tmp_path, max_iters=10, eval_interval=5, log_interval=5, gradient_accumulation_steps=4)
    # `python -m torch.distributed.run` is torchrun, from this interpreter's torch
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    run = subprocess.run([*torchrun, "-m", "nanogpt", *flags], capture_output=True, text=True, cwd=REPO,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finals = dict(re.findall(r"^\[rank (\d)\] run \S+ finished: iteration 10, params sha256 (\w+)$", run.stdout, re.M))
    assert set(finals) == {"0", "1"}, run.stdout[-3000:]
    # each rank trains on its own batches (seed + rank): only synced gradients keep the weights equal
    assert finals["0"] == finals["1"]
    run_ids = set(re.findall(r"^\[rank \d\] run (\S+) finished", run.stdout, re.M))
    assert len(run_ids) == 1  # all ranks label their metrics with one run id
    # only rank 0 evaluates, logs and checkpoints
    assert re.search(r"^\[rank 0\] iter 10: loss", run.stdout, re.M)
    assert not re.search(r"^\[rank 1\] (iter|step|saved)", run.stdout, re.M)
    assert (tmp_path / "out" / "ckpt.pt").is_file()
