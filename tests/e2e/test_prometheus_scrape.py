"""End to end: a real Prometheus scrapes a real training every second, and agrees with its log."""

import math
import re
import subprocess

import pytest

from nanogpt.model import GPT, GPTConfig
from tests.support.procs import TINY_MODEL, Prometheus, Trainer, corpus_vocab_size, free_port, http_get, require, \
    wait_until
from tests.support.spec import SPEC_METRICS

pytestmark = pytest.mark.slow

RUN_ID = "e2e-scrape"
MAX_ITERS = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Prometheus watching a 60-iteration training that lingers until the final values were scraped."""
    workdir = tmp_path_factory.mktemp("scrape")
    port = free_port()
    prometheus = Prometheus(workdir / "prometheus", [f"127.0.0.1:{port}"])
    trainer = None
    try:
        trainer = Trainer(workdir, f"--metrics-port={port}", f"--run-id={RUN_ID}", f"--max_iters={MAX_ITERS}",
                          "--eval_interval=20", "--eval_iters=5", "--log_interval=5", "--warmup_iters=10", "--bias=False",
                          "--metrics-linger=600")
        wait_until(lambda: trainer.find(rf"run {RUN_ID} finished"), timeout=180, what="the training to finish")
        selector = f'run_id="{RUN_ID}",rank="0"'
        wait_until(lambda: prometheus.value(f'nanogpt_training_state{{{selector},state="finished"}}') == 1,
                   timeout=60, what="Prometheus to scrape the finished state")
        yield prometheus, trainer, selector
    finally:
        if trainer is not None:
            trainer.stop()
        prometheus.stop()


def last_match(trainer, pattern):
    matches = re.findall(pattern, trainer.output(), re.MULTILINE)
    assert matches, f"no line matching {pattern!r} in the trainer's log"
    return matches[-1]


@pytest.mark.parametrize("name", sorted(SPEC_METRICS))
def test_every_spec_metric_reaches_prometheus_with_run_id_and_rank(run, name):
    prometheus, _, selector = run
    series = prometheus.query(f"{name}{{{selector}}}")
    assert series, f"Prometheus has no {name} for {selector}"
    assert all(s["metric"]["job"] == "nanogpt" for s in series)


def test_the_final_iteration_and_state_agree_with_the_log(run):
    prometheus, trainer, selector = run
    final = int(last_match(trainer, rf"run {RUN_ID} finished: iteration (\d+)"))
    assert final == MAX_ITERS
    assert prometheus.value(f"nanogpt_iteration{{{selector}}}") == final
    assert prometheus.value(f"nanogpt_max_iterations{{{selector}}}") == MAX_ITERS
    assert prometheus.value(f'nanogpt_training_state{{{selector},state="running"}}') == 0


def test_tokens_are_iterations_times_tokens_per_iteration(run):
    prometheus, trainer, selector = run
    per_iteration = int(last_match(trainer, r"tokens per iteration will be: [\d,]+ \(per rank: ([\d,]+)\)")
                        .replace(",", ""))
    iterations = prometheus.value(f"nanogpt_iterations_total{{{selector}}}")
    assert iterations == MAX_ITERS + 1  # nanoGPT trains iterations 0..max_iters
    assert prometheus.value(f"nanogpt_tokens_total{{{selector}}}") == iterations * per_iteration


def test_the_last_loss_and_eval_losses_agree_with_the_log(run):
    prometheus, trainer, selector = run
    loss = float(last_match(trainer, rf"^iter {MAX_ITERS}: loss ([\d.]+)"))
    train_loss, val_loss = map(float, last_match(trainer, rf"^step {MAX_ITERS}: train loss ([\d.]+), val loss ([\d.]+)"))
    assert prometheus.value(f"nanogpt_train_loss{{{selector}}}") == pytest.approx(loss, abs=1e-4)
    assert prometheus.value(f'nanogpt_eval_loss{{{selector},split="train"}}') == pytest.approx(train_loss, abs=1e-4)
    assert prometheus.value(f'nanogpt_eval_loss{{{selector},split="val"}}') == pytest.approx(val_loss, abs=1e-4)
    logged = prometheus.value(f"nanogpt_logged_loss_count{{{selector}}}")
    assert logged == len(re.findall(r"^iter \d+: loss", trainer.output(), re.MULTILINE))


def test_the_parameter_count_is_the_models_own(run):
    prometheus, _, selector = run
    flags = dict(arg.lstrip("-").split("=") for arg in TINY_MODEL)
    vocab_size = corpus_vocab_size()
    model = GPT(GPTConfig(n_layer=int(flags["n_layer"]), n_head=int(flags["n_head"]), n_embd=int(flags["n_embd"]),
                          block_size=int(flags["block_size"]), vocab_size=vocab_size, bias=False))
    assert prometheus.value(f'nanogpt_model_parameters{{{selector},component="total"}}') == \
        sum(p.numel() for p in model.parameters())
    assert prometheus.value(f'nanogpt_model_config{{{selector},field="vocab_size"}}') == vocab_size


def test_step_times_and_rates_were_recorded(run):
    prometheus, _, selector = run
    assert prometheus.value(f"nanogpt_iteration_duration_seconds_count{{{selector}}}") == MAX_ITERS  # between steps
    assert 0 < prometheus.value(f"nanogpt_learning_rate{{{selector}}}") < 1
    assert math.isfinite(prometheus.value(f"nanogpt_train_loss_ema{{{selector}}}"))


def test_promtool_accepts_the_trainers_metrics(run):
    _, trainer, _ = run
    promtool = require("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=http_get(f"{trainer.base_url}/metrics"),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
