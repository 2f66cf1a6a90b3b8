"""nanogpt_monitor.lightning: a real Lightning Trainer fits a tiny LightningModule that logs nothing
but `val_loss` and one value of its own; the monitor it starts serves loss, lr, throughput and ETA."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")  # the test extra installs it (pyproject)

from nanogpt_monitor.lightning import MonitorCallback, batch_tokens  # noqa: E402
from tests.support.recorded import Served  # noqa: E402

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
