"""nanogpt_monitor.lightning: a real Lightning Trainer fits a tiny LightningModule that logs nothing
but `val_loss` and one value of its own; the monitor it starts serves loss, lr, throughput and ETA.
A second fit, over datasets whose reads sleep, shows where the time goes."""

from __future__ import annotations

import math
import time

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")  # the test extra installs it (pyproject)

from exporter.catalogue import PHASES  # noqa: E402
from exporter.phases import process_start_time  # noqa: E402
from nanogpt_monitor.lightning import MonitorCallback, batch_tokens  # noqa: E402
from tests.support.procs import http_get  # noqa: E402
from tests.support.recorded import Served, scraped_value  # noqa: E402

VOCAB, SEQ, BATCH, STEPS, LR = 32, 8, 4, 6, 0.01


class TinyLM(L.LightningModule):
    """Embedding -> linear over random tokens; returns its loss, logs only val_loss and `seen`."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, VOCAB)

    def loss(self, batch):
        logits = self.head(self.embed(batch[:, :-1]))
        return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    def training_step(self, batch, batch_idx):
        self.log("seen", float(batch_idx))
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def loader(n: int, seed: int):
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(ids, batch_size=BATCH)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    callback = MonitorCallback(run_id="lightning-test", port=0)
    trainer = L.Trainer(max_steps=STEPS, log_every_n_steps=2, val_check_interval=3, limit_val_batches=2,
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path_factory.mktemp("lightning")),
                        callbacks=[callback])
    torch.manual_seed(0)
    trainer.fit(TinyLM(), loader(64, 1), loader(8, 2))
    yield callback, trainer
    callback.run.close(linger_seconds=0)


def value(callback, metric, **labels):
    return Served(callback.run.url).value(metric, run_id="lightning-test", rank="0", **labels)


def test_every_optimizer_step_is_an_iteration_with_its_tokens(fitted):
    callback, _ = fitted
    assert value(callback, "nanogpt_iterations_total") == STEPS
    assert value(callback, "nanogpt_tokens_total") == STEPS * BATCH * SEQ
    assert value(callback, "nanogpt_max_iterations") == STEPS


def test_loss_lr_and_grad_norm_arrive_without_any_self_log(fitted):
    callback, _ = fitted
    assert value(callback, "nanogpt_logged_loss_count") == STEPS / 2
    assert 0 < value(callback, "nanogpt_train_loss") < 2 * math.log(VOCAB)
    assert value(callback, "nanogpt_learning_rate") == LR
    assert value(callback, "nanogpt_grad_norm") > 0
    point = Served(callback.run.url).points()[-1]
    assert point["tokens_per_second"] > 0 and point["step_seconds"] > 0


def test_what_the_module_logs_is_exported_too(fitted):
    assert value(fitted[0], "nanogpt_logged_scalar", key="seen") == STEPS - 1


def test_a_logged_val_loss_is_the_eval_loss(fitted):
    callback, trainer = fitted
    logged = float(trainer.callback_metrics["val_loss"])
    assert value(callback, "nanogpt_eval_loss", split="val") == pytest.approx(logged)


def test_checkpoints_and_the_end_are_reported(fitted):
    callback, _ = fitted
    assert value(callback, "nanogpt_last_checkpoint_timestamp_seconds") > 0
    assert value(callback, "nanogpt_training_state", state="finished") == 1


def test_batch_tokens_reads_the_shape_of_token_batches():
    ids = torch.zeros(3, 5, dtype=torch.long)
    assert batch_tokens(ids) == batch_tokens({"input_ids": ids}) == batch_tokens((ids, ids)) == 15
    assert batch_tokens(torch.zeros(3, 5)) == batch_tokens("text") == 0  # not token ids


# the slowed fit: every read of a training row sleeps TRAIN_SLEEP, of a validation row VAL_SLEEP
TRAIN_SLEEP, VAL_SLEEP, SLOW_BATCH, ACCUMULATE, SLOW_STEPS, VAL_BATCHES = 0.02, 0.25, 2, 2, 5, 2


class Sleepy(torch.utils.data.Dataset):
    """Rows of random tokens whose every read sleeps first: a loader slowed from outside the loop."""

    def __init__(self, n: int, seed: int, seconds: float):
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))
        self.seconds = seconds

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return self.ids[i]


@pytest.fixture(scope="module")
def slowed(tmp_path_factory):
    """(callback, {phase: seconds}, the wall clock to the last iteration, the Trainer's profiler):
    SLOW_STEPS optimizer steps of ACCUMULATE batches each; one validation (after step 3) and saves
    after steps 2 and 4, all before the last iteration, so the phases add up to the wall clock to it."""
    out = tmp_path_factory.mktemp("lightning-slowed")
    callback = MonitorCallback(run_id="lightning-slowed", port=0)
    profiler = L.profilers.SimpleProfiler()  # the user's own profiler: the callback times through it
    trainer = L.Trainer(max_steps=SLOW_STEPS, accumulate_grad_batches=ACCUMULATE, profiler=profiler,
                        val_check_interval=3 * ACCUMULATE, limit_val_batches=VAL_BATCHES, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out),
                        callbacks=[callback, L.callbacks.ModelCheckpoint(dirpath=str(out), every_n_train_steps=2,
                                                                         save_top_k=-1)])
    torch.manual_seed(0)
    train = torch.utils.data.DataLoader(Sleepy(64, 1, TRAIN_SLEEP), batch_size=SLOW_BATCH)
    val = torch.utils.data.DataLoader(Sleepy(8, 2, VAL_SLEEP), batch_size=SLOW_BATCH)
    trainer.fit(TinyLM(), train, val)
    text = http_get(callback.run.url + "/metrics").decode()
    labels = {"run_id": "lightning-slowed", "rank": "0"}
    phases = {phase: scraped_value(text, "nanogpt_time_seconds_total", phase=phase, **labels) for phase in PHASES}
    wall = scraped_value(text, "nanogpt_last_iteration_timestamp_seconds", **labels) - process_start_time()
    yield callback, phases, wall, profiler
    callback.run.close(linger_seconds=0)


def test_a_slow_loader_s_reads_are_data_wait(slowed):
    _, phases, _, _ = slowed
    # the first step's fetches are startup; every later step fetched ACCUMULATE batches of SLOW_BATCH rows
    slept = (SLOW_STEPS - 1) * ACCUMULATE * SLOW_BATCH * TRAIN_SLEEP
    assert phases["data_wait"] >= 0.8 * slept
    # the validation's slower reads are not data wait (their fetches are Lightning's val_next, not timed)
    assert phases["data_wait"] < slept + 0.5 * VAL_BATCHES * SLOW_BATCH * VAL_SLEEP


def test_the_validation_is_eval_and_the_saves_are_checkpoint(slowed):
    _, phases, _, _ = slowed
    assert phases["eval"] >= 0.8 * VAL_BATCHES * SLOW_BATCH * VAL_SLEEP
    assert phases["checkpoint"] > 0


def test_the_phases_add_up_to_the_wall_clock(slowed):
    _, phases, wall, _ = slowed
    assert phases["lost"] == 0
    assert sum(phases.values()) == pytest.approx(wall, abs=0.05)  # nothing counted twice, nothing left out


def test_the_trainer_s_profiler_still_profiles_and_is_put_back(slowed):
    profiler = slowed[3]
    fetches = [name for name in profiler.recorded_durations if name.endswith(".train_dataloader_next")]
    assert fetches and len(profiler.recorded_durations[fetches[0]]) >= SLOW_STEPS * ACCUMULATE
    assert len(profiler.recorded_durations["save_checkpoint"]) == 2
    assert "start" not in vars(profiler) and "stop" not in vars(profiler)  # the class's methods again
