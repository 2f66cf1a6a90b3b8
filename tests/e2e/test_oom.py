"""CUDA out of memory during a step, on CPU: torch.cuda.OutOfMemoryError raised from a test hook
(tests/support/oom_train.py wraps the model's forward from outside) inside the real trainer."""

from __future__ import annotations

import signal
import sys

import pytest
import torch

from nanogpt.checkpoint import load_checkpoint
from tests.support.procs import Trainer, http_get, http_json, wait_until

pytestmark = pytest.mark.slow

# 13th training forward = iteration 12 (one micro-step per iteration); evals and saves at 5 and 10
OOM_AT_FORWARD = 13
FLAGS = ["--max_iters=100", "--eval_interval=5", "--eval_iters=2", "--log_interval=1",
         "--always_save_checkpoint=True", "--gradient_accumulation_steps=1", "--metrics-linger=120"]


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory):
    """(trainer, /api/status, /metrics text) once the run has failed; the trainer is lingering."""
    workdir = tmp_path_factory.mktemp("oom")
    trainer = Trainer(workdir, *FLAGS, command=[sys.executable, "-m", "tests.support.oom_train",
                                                f"--oom-at-forward={OOM_AT_FORWARD}"])
    try:
        status = wait_until(lambda: (s := http_json(f"{trainer.base_url}/api/status"))["state"] == "failed" and s,
                            timeout=120, what="the run to fail")
        metrics = http_get(f"{trainer.base_url}/metrics").decode()
        trainer.signal(signal.SIGTERM)  # ends the linger
        trainer.wait(timeout=60)
        yield trainer, status, metrics
    finally:
        trainer.stop()


def test_oom_is_one_error_line_with_the_figures_and_exit_1(oom_run):
    trainer, _, _ = oom_run
    assert trainer.proc.returncode == 1
    output = trainer.output()
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: CUDA out of memory at iteration 12 allocating 2.00 GiB: ")
    for figure in ("allocated ", "reserved ", "device total "):
        assert figure in line  # n/a on CPU; GiB on a GPU (scripts/gpu_check.sh runs the real thing)
    assert "batch 8x32 tokens x 1 micro-steps" in line


def test_oom_leaves_the_run_failed_with_the_reason(oom_run):
    _, status, metrics = oom_run
    assert status["state"] == "failed"
    assert status["reason"].startswith("CUDA out of memory at iteration 12")
    assert 'nanogpt_training_state{rank="0",run_id="%s",state="failed"} 1.0' % status["run_id"] in metrics


def test_oom_keeps_the_last_good_checkpoint(oom_run):
    trainer, _, _ = oom_run
    checkpoint = load_checkpoint(trainer.out_dir / "ckpt.pt", torch.device("cpu"))
    assert checkpoint["iter_num"] == 10  # the eval before the failure; nothing was written after it
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_a_cpu_run_exports_no_gpu_series_and_the_status_lists_none(oom_run):
    _, status, metrics = oom_run
    assert "nanogpt_gpu_" not in metrics
    assert status["gpus"] == [] and status["device"] == "cpu"
