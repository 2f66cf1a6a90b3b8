"""The test harness that injects faults into the real trainer from outside (tests/support/faulty_train.py)."""

import pytest

import nanogpt.train
from nanogpt.model import GPT
from nanogpt.train import train
from tests.support.faulty_train import injected, split_args
from tests.support.trainer import Recorder, tiny_config


def test_its_own_flags_come_off_the_command_line_in_every_spelling_and_the_rest_stays_in_order():
    faults, rest = split_args(["--n_layer", "2", "--inject_nonfinite_at=3", "--lr-zero-after", "5",
                               "--slow_save_seconds", "0.5", "--out_dir=x", "--stop_on_nonfinite"])
    assert {k: v for k, v in faults.items() if v != NOTHING[k]} == {
        "inject_nonfinite_at": 3, "lr_zero_after": 5, "slow_save_seconds": 0.5}
    assert rest == ["--n_layer", "2", "--out_dir=x", "--stop_on_nonfinite"]


NOTHING = {"inject_nonfinite_at": -1, "lr_zero_after": -1, "slow_save_seconds": 0.0, "slow_rank": -1,
           "slow_rank_seconds": 0.0, "slow_data_seconds": 0.0, "lr_burst_at": -1, "lr_burst_factor": 1000.0}


def test_without_its_flags_nothing_is_injected():
    assert split_args(["--max_iters=5"]) == (NOTHING, ["--max_iters=5"])


def test_slow_data_seconds_shows_as_each_iterations_data_wait(tmp_path):
    rec = Recorder()
    with injected(slow_data_seconds=0.02):
        train(tiny_config(tmp_path, max_iters=5, eval_interval=100), rec)
    assert all(i.data_seconds >= 0.02 for i in rec.of("on_iteration"))


def test_slow_rank_slows_the_named_rank_only(tmp_path, monkeypatch):
    for rank, slowed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        rec = Recorder()
        with injected(slow_rank=0, slow_rank_seconds=0.1):
            train(tiny_config(tmp_path / rank, max_iters=4, eval_interval=100), rec)
        stamps = [i.timestamp for i in rec.of("on_iteration")]
        assert (stamps[-1] - stamps[0] >= 4 * 0.1) == slowed  # 4 steps between the first and last


def test_lr_burst_multiplies_one_iterations_lr(tmp_path):
    rec = Recorder()
    with injected(lr_burst_at=6, lr_burst_factor=100):
        train(tiny_config(tmp_path, max_iters=8, log_interval=1, eval_interval=100), rec)
    lrs = {p.iteration: p.lr for p in rec.of("on_log")}
    assert lrs[6] == pytest.approx(100 * (lrs[5] + lrs[7]) / 2, rel=0.2)


def test_lr_zero_after_makes_the_loops_lr_zero_from_that_iteration(tmp_path):
    rec = Recorder()
    with injected(lr_zero_after=10):
        train(tiny_config(tmp_path, max_iters=20, log_interval=5, eval_interval=100), rec)
    lrs = {p.iteration: p.lr for p in rec.of("on_log")}
    assert lrs[5] > 0 and lrs[10] == lrs[15] == lrs[20] == 0.0


def test_slow_save_seconds_stretches_each_checkpoint_write(tmp_path):
    rec = Recorder()
    with injected(slow_save_seconds=0.5):
        train(tiny_config(tmp_path, max_iters=10, eval_interval=10), rec)
    assert [c.seconds >= 0.5 for c in rec.of("on_checkpoint")] == [True]


def test_the_patches_are_undone_when_the_block_ends():
    def patched():
        return nanogpt.train.get_lr, GPT.forward, nanogpt.train.save_checkpoint, nanogpt.train.get_batch

    originals = patched()
    with pytest.raises(RuntimeError), injected(inject_nonfinite_at=0, lr_zero_after=0, slow_save_seconds=1,
                                               slow_data_seconds=1):
        assert all(now is not then for now, then in zip(patched(), originals))
        raise RuntimeError
    assert patched() == originals
