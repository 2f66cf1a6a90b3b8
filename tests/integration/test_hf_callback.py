"""nanogpt_monitor.hf: a real Hugging Face Trainer on a tiny GPT-2 (built from a config, no hub)
for a few CPU steps; the monitor process it starts serves what the Trainer's hooks handed over.
A second run, over datasets whose reads sleep, shows where the time goes."""

from __future__ import annotations

import math
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")  # the test extra installs it (pyproject)

from exporter.catalogue import PHASES  # noqa: E402
from exporter.phases import process_start_time  # noqa: E402
from nanogpt_monitor.hf import MonitorCallback  # noqa: E402
from tests.support.procs import http_get, http_json  # noqa: E402
from tests.support.recorded import Served, scraped_value  # noqa: E402

VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 6


class RandomTokens(torch.utils.data.Dataset):
    """Rows of random tokens; with `seconds`, every read sleeps that long first (a slow loader)."""

    def __init__(self, n: int, seed: int, seconds: float = 0.0):
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))
        self.seconds = seconds

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if self.seconds:
            time.sleep(self.seconds)
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class WriteSample(transformers.TrainerCallback):
    """What docs/loops.md shows: the user's own callback generates at each evaluation and hands the
    text to the monitor's run (the adapter generates nothing of its own)."""

    def __init__(self, monitor: MonitorCallback):
        self.monitor = monitor

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            ids = model.generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=8, do_sample=False,
                                 pad_token_id=0)
        self.monitor.run.sample(state.global_step, " ".join(map(str, ids[0].tolist())))


def tiny_gpt2():
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=SEQ, vocab_size=VOCAB,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(callback, trainer) after STEPS steps, logging every 2, evaluating and saving every 3."""
    out = tmp_path_factory.mktemp("hf")
    model = tiny_gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
        logging_steps=2, eval_strategy="steps", eval_steps=3, save_steps=3, report_to=[], use_cpu=True,
        disable_tqdm=True, learning_rate=1e-3, lr_scheduler_type="constant", max_grad_norm=1.0)
    callback = MonitorCallback(run_id="hf-test", port=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(64, 1),
                                   eval_dataset=RandomTokens(8, 2), callbacks=[callback, WriteSample(callback)])
    trainer.train()
    yield callback, trainer
    callback.run.close(linger_seconds=0)


def value(callback, metric, **labels):
    return Served(callback.run.url).value(metric, run_id="hf-test", rank="0", **labels)


def test_every_step_is_an_iteration_with_its_tokens(trained):
    callback, _ = trained
    assert value(callback, "nanogpt_iterations_total") == STEPS
    assert value(callback, "nanogpt_iteration") == STEPS
    assert value(callback, "nanogpt_tokens_total") == STEPS * BATCH * SEQ  # eval batches not counted


def test_max_steps_is_the_target_for_the_eta(trained):
    assert value(trained[0], "nanogpt_max_iterations") == STEPS


def test_logged_loss_lr_and_grad_norm_are_the_trainer_s(trained):
    callback, trainer = trained
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert value(callback, "nanogpt_train_loss") == pytest.approx(last["loss"])
    assert value(callback, "nanogpt_learning_rate") == pytest.approx(last["learning_rate"])
    assert value(callback, "nanogpt_grad_norm") == pytest.approx(last["grad_norm"])
    assert value(callback, "nanogpt_logged_loss_count") == STEPS / 2
    assert value(callback, "nanogpt_logged_scalar", key="epoch") == pytest.approx(last["epoch"])


def test_a_sample_handed_over_at_each_evaluation_is_served(trained):
    answer = http_json(trained[0].run.url + "/api/samples")
    assert [s["iteration"] for s in answer["samples"]] == [6, 3]
    assert all(len(s["sample"].split()) == 9 for s in answer["samples"])  # the start token and 8 more


def test_tokens_per_second_is_logged(trained):
    point = Served(trained[0].run.url).points()[-1]
    assert point["tokens_per_second"] > 0 and point["step_seconds"] > 0


def test_the_eval_loss_is_the_val_split(trained):
    callback, trainer = trained
    evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 2
    assert value(callback, "nanogpt_eval_loss", split="val") == pytest.approx(evals[-1])
    assert math.isnan(value(callback, "nanogpt_eval_loss", split="train"))  # the Trainer evaluates val only
    assert Served(callback.run.url).status()["best_val_loss"] == pytest.approx(min(evals))


def test_saves_are_checkpoints(trained):
    callback, _ = trained
    assert value(callback, "nanogpt_last_checkpoint_timestamp_seconds") > 0
    assert Served(callback.run.url).status()["last_checkpoint"]["path"].endswith("checkpoint-6")


def test_the_run_ends_finished(trained):
    assert value(trained[0], "nanogpt_training_state", state="finished") == 1


def test_the_model_is_described_with_tied_embeddings_counted_once(trained):
    callback, trainer = trained
    model = Served(callback.run.url).model()
    assert model["parameters"]["total"] == sum(p.numel() for p in trainer.model.parameters())
    assert value(callback, "nanogpt_model_parameters", component="lm_head") == 0
    assert model["model_config"]["n_layer"] == 1


# the slowed run: every read of a training row sleeps TRAIN_SLEEP, of an evaluation row EVAL_SLEEP
TRAIN_SLEEP, EVAL_SLEEP, SLOW_BATCH, ACCUMULATE, SLOW_STEPS, EVAL_ROWS = 0.02, 0.25, 2, 2, 5, 4


@pytest.fixture(scope="module")
def slowed(tmp_path_factory):
    """({phase: seconds}, the wall clock to the last iteration, the seconds reported after it):
    SLOW_STEPS steps of ACCUMULATE batches each, logging every step, evaluating at step 3 and
    saving at steps 2 and 4; at the last step the Trainer evaluates and saves once more, after
    that iteration (their seconds are counted in their phases at once)."""
    out = tmp_path_factory.mktemp("hf-slowed")
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=SLOW_STEPS, per_device_train_batch_size=SLOW_BATCH,
        per_device_eval_batch_size=SLOW_BATCH, gradient_accumulation_steps=ACCUMULATE, logging_steps=1,
        eval_strategy="steps", eval_steps=3, save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0)
    callback = MonitorCallback(run_id="hf-slowed", port=0)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=RandomTokens(64, 1, TRAIN_SLEEP),
                                   eval_dataset=RandomTokens(EVAL_ROWS, 2, EVAL_SLEEP), callbacks=[callback])
    trainer.train()
    text = http_get(callback.run.url + "/metrics").decode()
    labels = {"run_id": "hf-slowed", "rank": "0"}
    phases = {phase: scraped_value(text, "nanogpt_time_seconds_total", phase=phase, **labels) for phase in PHASES}
    wall = scraped_value(text, "nanogpt_last_iteration_timestamp_seconds", **labels) - process_start_time()
    assert [entry["step"] for entry in trainer.state.log_history if "eval_runtime" in entry] == [3, SLOW_STEPS]
    after_last = (scraped_value(text, "nanogpt_eval_duration_seconds", **labels)  # the last evaluation's
                  + Served(callback.run.url).status()["last_checkpoint"]["seconds"])
    yield phases, wall, after_last
    callback.run.close(linger_seconds=0)


def test_a_slow_loader_s_reads_are_data_wait(slowed):
    phases, _, _ = slowed
    # the first step's fetches are startup; every later step fetched ACCUMULATE batches of SLOW_BATCH rows
    slept = (SLOW_STEPS - 1) * ACCUMULATE * SLOW_BATCH * TRAIN_SLEEP
    assert phases["data_wait"] >= 0.8 * slept
    # the evaluation's slower reads, between steps 3 and 4, are not data wait
    assert phases["data_wait"] < slept + 0.5 * EVAL_ROWS * EVAL_SLEEP


def test_the_evaluations_are_eval_and_the_saves_are_checkpoint(slowed):
    phases, _, _ = slowed
    assert phases["eval"] >= 0.8 * 2 * EVAL_ROWS * EVAL_SLEEP  # at step 3 and at the end
    assert phases["checkpoint"] > 0


def test_the_phases_add_up_to_the_wall_clock(slowed):
    phases, wall, after_last = slowed
    assert phases["lost"] == 0
    # nothing counted twice, nothing left out
    assert sum(phases.values()) - after_last == pytest.approx(wall, abs=0.05)
