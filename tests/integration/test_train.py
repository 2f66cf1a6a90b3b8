"""train(): nanoGPT's schedule and loop, and the events it hands the observer."""

import logging
import math
import time

import pytest

import nanogpt.train
from nanogpt import events
from nanogpt.config import ConfigError, build_config
from nanogpt.train import get_lr, train
from tests.support.procs import corpus_vocab_size, tiny_shakespeare
from tests.support.faulty_train import injected
from tests.support.trainer import Recorder, tiny_config

SCHEDULE = build_config(({"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 10, "lr_decay_iters": 110}, "test"))


@pytest.mark.parametrize(
    "it, lr",
    [(0, 1e-3 * 1 / 11), (9, 1e-3 * 10 / 11), (10, 1e-3), (60, 5.5e-4), (110, 1e-4), (500, 1e-4)],
)
def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr(it, lr):
    assert get_lr(it, SCHEDULE) == pytest.approx(lr)


def test_lr_is_constant_without_decay():
    cfg = build_config(({"decay_lr": False, "learning_rate": 3e-4}, "test"))
    assert {get_lr(it, cfg) for it in (0, 50, 5000)} == {3e-4}


def test_a_short_run_lowers_the_loss(tmp_path):
    rec = Recorder()
    result = train(tiny_config(tmp_path, max_iters=60, lr_decay_iters=60, eval_interval=30, learning_rate=3e-3), rec)
    evals = rec.of("on_eval")
    assert result.state == "finished" and result.iteration == 60
    assert evals[0].val_loss == pytest.approx(math.log(corpus_vocab_size()), abs=0.15)
    assert evals[-1].val_loss < evals[0].val_loss - 0.5
    assert rec.of("on_log")[-1].loss < rec.of("on_log")[0].loss - 0.5


@pytest.mark.slow
def test_nanogpts_small_cpu_config_follows_nanogpts_loss_curve_on_tiny_shakespeare(tmp_path):
    # nanoGPT's README CPU example (the cpu-small preset), seed 1337: ln(65) = 4.17 at
    # iteration 0, about 2.47 at 200 (bench/throughput.py prints the same figures)
    cfg = build_config(({"data_file": str(tiny_shakespeare()), "out_dir": str(tmp_path / "out"),
                         "data_cache_dir": str(tmp_path / "cache"), "device": "cpu", "max_iters": 200,
                         "lr_decay_iters": 200, "log_interval": 200, "always_save_checkpoint": False}, "test"))
    rec = Recorder()
    train(cfg, rec)
    logs = {p.iteration: p.loss for p in rec.of("on_log")}
    assert logs[0] == pytest.approx(4.18, abs=0.05)
    assert logs[200] == pytest.approx(2.47, abs=0.1)


def test_the_observer_hears_every_event_in_order(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=20, log_interval=5, eval_interval=10), rec)
    sequence = [(m, getattr(e, "iteration", None)) for m, e in rec.events]
    expected = [("on_run_start", None)]
    for it in range(21):
        if it % 10 == 0:
            expected.extend([("on_eval", it), ("on_sample", it)])
            if it > 0:
                expected.append(("on_checkpoint", it))
        expected.append(("on_iteration", it))
        if it % 5 == 0:
            expected.append(("on_log", it))
    expected.append(("on_run_end", 20))
    assert sequence == expected
    assert rec.of("on_run_end")[0].state == "finished"


def test_run_start_describes_the_model_and_the_run(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=0, run_id="r1"), rec)
    start = rec.of("on_run_start")[0]
    assert (start.run_id, start.rank, start.world_size) == ("r1", 0, 1)
    assert (start.start_iteration, start.max_iterations) == (0, 0)
    assert start.tokens_per_iteration == 8 * 32
    assert start.model_config == dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False,
                                      vocab_size=corpus_vocab_size(), dropout=0.0)  # fmt: skip
    assert start.parameters["total"] == sum(v for k, v in start.parameters.items() if k != "total")
    assert (start.device, start.dtype, start.config["max_iters"]) == ("cpu", "float32", 0)
    assert type(start.model).__name__ == "GPT"  # handed over as it is: describing it is the wiring's job
    assert sum(p.numel() for p in start.model.parameters()) == start.parameters["total"]


def test_log_points_carry_host_numbers_for_the_logged_iteration(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=12, log_interval=4, eval_interval=100, grad_clip=1.0), rec)
    logs = rec.of("on_log")
    assert [p.iteration for p in logs] == [0, 4, 8, 12]  # the last iteration is logged too
    for p in logs:
        assert all(type(v) in (int, float) for v in (p.loss, p.lr, p.step_seconds, p.grad_norm))
        assert p.step_seconds > 0 and p.tokens_per_second == pytest.approx(8 * 32 / p.step_seconds)
        assert p.lr == pytest.approx(get_lr(p.iteration, tiny_config(tmp_path)))
    assert all(p.mfu is None for p in logs)  # a CPU's peak is not known: MFU is no figure


def test_mfu_is_a_figure_once_peak_flops_is_given_and_waits_for_warm_up(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=12, log_interval=4, eval_interval=100, peak_flops=1e12), rec)
    logs = rec.of("on_log")
    assert logs[0].mfu is None and 0 < logs[-1].mfu < 1


def test_grad_norm_is_none_without_clipping(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=5, grad_clip=0.0), rec)
    assert rec.of("on_log")[0].grad_norm is None


def test_an_observer_that_raises_is_logged_once_and_training_goes_on(tmp_path, caplog):
    class Broken(events.Observer):
        def on_iteration(self, event):
            raise RuntimeError("observer bug")

    result = train(tiny_config(tmp_path, max_iters=10), Broken())
    assert result.state == "finished" and result.iteration == 10
    assert len([r for r in caplog.records if "observer.on_iteration raised" in r.message]) == 1


def test_the_safe_observer_is_an_observer_that_guards_every_method_of_one():
    hooks = {name for name in vars(events.Observer) if name.startswith("on_")}
    assert issubclass(events.SafeObserver, events.Observer)
    assert hooks and hooks <= set(vars(events.SafeObserver))  # none left to the base's silent no-op


def test_the_safe_observer_passes_each_event_on_and_logs_a_failing_method_once(caplog):
    class HalfBroken(Recorder):
        def on_log(self, event):
            raise RuntimeError("observer bug")

    observer = HalfBroken()
    safe = events.SafeObserver(observer)
    end = events.RunEnd(1, "finished")
    for _ in range(2):
        safe.on_log(None)
        safe.on_run_end(end)
    assert observer.of("on_run_end") == [end, end]
    assert len([r for r in caplog.records if "observer.on_log raised" in r.message]) == 1


def test_without_an_observer_the_safe_observer_calls_nothing_and_logs_nothing(caplog):
    events.SafeObserver(None).on_run_end(events.RunEnd(1, "finished"))
    assert caplog.records == []


def test_an_exception_in_the_loop_ends_the_run_failed_and_propagates(tmp_path):
    class CtrlC(Recorder):
        def on_iteration(self, event):
            super().on_iteration(event)
            if event.iteration == 3:
                raise KeyboardInterrupt  # not an Exception: the loop lets it through, as Ctrl-C

    rec = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, max_iters=10), rec)
    end = rec.events[-1]
    assert end[0] == "on_run_end" and end[1].state == "failed" and "KeyboardInterrupt" in end[1].reason


def test_an_injected_nan_reaches_the_logged_loss(tmp_path):
    rec = Recorder()
    with injected(inject_nonfinite_at=7):
        result = train(tiny_config(tmp_path, max_iters=15), rec)
    losses = {p.iteration: p.loss for p in rec.of("on_log")}
    assert math.isfinite(losses[5]) and math.isnan(losses[10]) and math.isnan(losses[15])
    assert result.state == "finished"  # without stop_on_nonfinite the run goes on


def test_stop_on_nonfinite_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    rec = Recorder()
    cfg = tiny_config(tmp_path, max_iters=40, log_interval=5, eval_interval=10, stop_on_nonfinite=True)
    with injected(inject_nonfinite_at=13):
        result = train(cfg, rec)
    assert (result.state, result.iteration) == ("failed", 15)
    assert rec.of("on_run_end")[0].reason == "non-finite loss at iteration 15"
    assert [c.iteration for c in rec.of("on_checkpoint")] == [10]


def test_eval_only_evaluates_once_and_trains_nothing(tmp_path):
    rec = Recorder()
    result = train(tiny_config(tmp_path, eval_only=True), rec)
    assert [m for m, _ in rec.events] == ["on_run_start", "on_eval", "on_sample", "on_run_end"]
    assert result.iterations_run == 0


def test_a_failed_checkpoint_save_is_logged_and_training_goes_on(tmp_path, caplog):
    cfg = tiny_config(tmp_path, max_iters=20, eval_interval=10)
    (tmp_path / "out" / "ckpt.pt" / "blocker").mkdir(parents=True)  # ckpt.pt is a non-empty directory
    rec = Recorder()
    with caplog.at_level(logging.ERROR):
        result = train(cfg, rec)
    assert result.state == "finished" and result.checkpoint_errors == 2
    assert rec.of("on_checkpoint") == []
    assert "could not save checkpoint" in caplog.text


def test_each_eval_writes_a_sample_from_the_prompt_of_the_asked_length(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, sample_chars=30, sample_prompt="The "), rec)
    samples = rec.of("on_sample")
    assert [s.iteration for s in samples] == [e.iteration for e in rec.of("on_eval")] == [0, 10, 20]
    assert all(s.text.startswith("The ") and len(s.text) == 4 + 30 and s.prompt == "The " for s in samples)
    assert all(s.seconds > 0 for s in samples)


def test_a_slow_sample_is_left_out_of_the_step_time(tmp_path, monkeypatch):
    write_sample = nanogpt.train.write_sample

    def slow(*args, **kwargs):  # a fault from outside: sampling takes 2 s
        time.sleep(2.0)
        return write_sample(*args, **kwargs)

    monkeypatch.setattr(nanogpt.train, "write_sample", slow)
    rec = Recorder()
    train(tiny_config(tmp_path, max_iters=20, log_interval=5, eval_interval=10), rec)
    assert [s.iteration for s in rec.of("on_sample")] == [0, 10, 20]
    # counted in, 2 s would be 0.4 s a step over a 5-step span; a tiny step takes milliseconds
    assert max(p.step_seconds for p in rec.of("on_log") if p.step_seconds is not None) < 0.2


def test_sampling_leaves_the_training_exactly_as_it_would_be_without(tmp_path):
    with_samples = train(tiny_config(tmp_path / "a", sample_chars=50, dropout=0.1), Recorder())
    without = train(tiny_config(tmp_path / "b", sample_chars=0, dropout=0.1), Recorder())
    assert with_samples.param_digest == without.param_digest  # same batches, dropout masks and updates


def test_the_same_weights_write_the_same_sample(tmp_path):
    first, second = Recorder(), Recorder()
    train(tiny_config(tmp_path / "a", max_iters=0), first)
    train(tiny_config(tmp_path / "b", max_iters=0), second)
    assert first.of("on_sample")[0].text == second.of("on_sample")[0].text


def test_weights_gone_nan_write_no_sample_and_training_goes_on(tmp_path, caplog):
    rec = Recorder()
    with injected(inject_nonfinite_at=3), caplog.at_level(logging.WARNING, logger="nanogpt"):
        result = train(tiny_config(tmp_path, max_iters=20, eval_interval=10), rec)
    assert result.iteration == 20 and [s.iteration for s in rec.of("on_sample")] == [0]
    assert "no sample at iteration 10: probability tensor contains" in caplog.text


def test_no_sample_is_written_with_sample_chars_0(tmp_path):
    rec = Recorder()
    train(tiny_config(tmp_path, sample_chars=0), rec)
    assert rec.of("on_sample") == []


def test_a_prompt_with_characters_the_data_lacks_is_a_config_error_before_training(tmp_path):
    rec = Recorder()
    with pytest.raises(ConfigError, match="sample_prompt: characters '\\u2603' are not in the vocabulary"):
        train(tiny_config(tmp_path, sample_prompt="\u2603"), rec)
    assert rec.events == []


def test_the_wiring_describes_the_model_the_loop_hands_over(tmp_path):
    from nanogpt.cli import MonitorObserver
    from nanogpt_monitor.run import MonitoredRun

    from tests.support.recorded import read_back

    run = MonitoredRun(run_id="r1", directory=tmp_path / "run", external=True)  # recorded, not served
    train(tiny_config(tmp_path, max_iters=0, run_id="r1"), MonitorObserver(run))
    model = read_back(run.monitor).view(0).model()
    tree = model["tree"]
    assert (tree["type"], tree["parameters"]) == ("GPT", model["parameters"]["total"])
    assert "transformer" in [child["name"] for child in tree["children"]]
    run.close()
