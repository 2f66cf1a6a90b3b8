"""scripts/gpu_check.sh and the runs of the real trainer it judges (bench/gpu_check.py, bench/sync_probe.py),
on a machine without a GPU; each claim's judgement on given shapes is tests/unit/test_gpu_check.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from tests.support.procs import REPO
from tests.support.trainer import tiny_flags


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the check itself")
def test_without_cuda_the_script_says_so_and_exits_0():
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gpu_check: no CUDA device")
    assert "Skipped." in result.stdout


def test_the_log_parser_reads_the_trainer_s_own_lines(tmp_path):
    run = gpu_check.train([*tiny_flags(tmp_path, max_iters=60, log_interval=10, no_metrics=False, peak_flops=1e12)],
                          metrics=False)
    assert run.exit == 0, run.output
    assert [it for it, _ in run.losses] == [0, 10, 20, 30, 40, 50, 60]
    assert len(run.rates) == 2 and all(rate > 0 for rate in run.rates)  # iterations 50 and 60, after warm-up
    assert len(run.mfus) == 2 and all(0 < mfu < 1 for mfu in run.mfus)


def test_the_sync_probe_sees_every_iteration_of_the_real_trainer(tmp_path):
    out = tmp_path / "syncs.json"
    result = subprocess.run([sys.executable, "-m", "bench.sync_probe", str(out), *tiny_flags(tmp_path, max_iters=12)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    probe = json.loads(out.read_text())
    assert probe["iterations"] == list(range(13)) and probe["exit"] == 0
    assert probe["cuda"] is torch.cuda.is_available()


def test_the_oom_claim_holds_on_the_trainer_s_real_oom_handling(tmp_path):
    run = gpu_check.train(tiny_flags(tmp_path, max_iters=20), metrics=False,
                          command=("tests.support.oom_train", "--oom-at-forward=3"))
    claim = gpu_check.oom_claim(run)
    assert claim.ok, claim.figure
    assert claim.figure.startswith("exit 1: error: CUDA out of memory at iteration 2")
