"""Checkpoints: nanoGPT's contents, atomic saves, resume continuity, clear errors."""

import pytest
import torch

from nanogpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanogpt.train import get_lr, train
from tests.support.procs import corpus_vocab_size
from tests.support.trainer import Recorder, tiny_config


def test_a_saved_checkpoint_loads_back_equal(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "optimizer": {}, "model_args": {"n_layer": 1},
             "iter_num": 7, "best_val_loss": 1.5, "config": {"out_dir": "x"}, "vocab": ["a", "b"]}  # fmt: skip
    save_checkpoint(state, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert {k: loaded[k] for k in ("iter_num", "best_val_loss", "config", "vocab")} == {
        "iter_num": 7, "best_val_loss": 1.5, "config": {"out_dir": "x"}, "vocab": ["a", "b"]}  # fmt: skip


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "ckpt.pt"
    good = {"model": {}, "optimizer": {}, "model_args": {}, "iter_num": 1, "best_val_loss": 2.0, "config": {},
            "vocab": []}  # fmt: skip
    save_checkpoint(good, path)

    def dies_midway(obj, f):  # writes part of a checkpoint, then the "process" dies
        torch.save(obj, f)
        f.truncate(100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**good, "iter_num": 2}, path, save=dies_midway)
    assert load_checkpoint(path)["iter_num"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_a_training_run_saves_nanogpts_checkpoint_contents(tmp_path):
    cfg = tiny_config(tmp_path, max_iters=10, eval_interval=10)
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    vocab_size = corpus_vocab_size()
    assert ckpt["iter_num"] == 10 and ckpt["config"]["max_iters"] == 10 and len(ckpt["vocab"]) == vocab_size
    assert ckpt["model_args"] == dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False,
                                      vocab_size=vocab_size, dropout=0.0)  # fmt: skip
    assert "state" in ckpt["optimizer"] and "transformer.wte.weight" in ckpt["model"]


def test_resume_continues_the_iteration_lr_schedule_and_best_val_loss(tmp_path):
    first = Recorder()
    train(tiny_config(tmp_path, max_iters=20, eval_interval=10), first)
    second = Recorder()
    result = train(tiny_config(tmp_path, max_iters=30, eval_interval=10, init_from="resume"), second)
    start = second.of("on_run_start")[0]
    assert start.start_iteration == 20 and start.max_iterations == 30
    logs = second.of("on_log")
    assert logs[0].iteration == 20 and logs[0].lr == pytest.approx(get_lr(20, tiny_config(tmp_path)))
    assert second.of("on_eval")[0].best_val_loss <= first.of("on_eval")[-1].best_val_loss
    # resumed weights: the loss carries on from where the first run got to, not from ln(vocab_size)
    assert second.of("on_eval")[0].val_loss == pytest.approx(first.of("on_eval")[-1].val_loss, abs=0.1)
    assert result.iteration == 30


def test_resume_into_a_different_model_shape_is_refused(tmp_path):
    train(tiny_config(tmp_path, max_iters=10, eval_interval=10))
    with pytest.raises(CheckpointError, match="has n_layer=2 but this run has n_layer=3"):
        train(tiny_config(tmp_path, n_layer=3, init_from="resume"))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, content):
    (tmp_path / "ckpt.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="is corrupt or unreadable") as e:
        load_checkpoint(tmp_path / "ckpt.pt")
    assert "\n" not in str(e.value)


def test_a_checkpoint_missing_nanogpt_keys_is_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not a nanogpt checkpoint .missing optimizer, model_args"):
        load_checkpoint(tmp_path / "ckpt.pt")
