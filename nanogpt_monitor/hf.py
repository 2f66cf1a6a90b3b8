"""Hugging Face `Trainer` -> the monitor, in one line (pip install 'nanogpt-monitor[hf]'):

    from nanogpt_monitor.hf import MonitorCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[MonitorCallback(port=8000)])

A thin mapping of the Trainer's hooks to `MonitoredRun` (nanogpt_monitor.run):
on_train_begin starts recording (on local rank 0 it starts the node's monitor
too) and describes the model (max_steps for the ETA), on_step_end counts the iteration and its tokens, on_log hands over loss,
learning rate and grad norm (other numeric log entries become
nanogpt_logged_scalar), on_evaluate the eval loss, on_save the checkpoint,
on_train_end the finished state; a process that exits before that reports
`failed`. Under accelerate / torchrun every process records its rank, and
local rank 0 starts the node's monitor on `port`, which serves every rank of
the node. Tokens are counted from the shape of the `input_ids` the
model is called with in training (a forward pre-hook: shapes only, no device
sync), so tokens/s shows whenever the batch carries them.

Where the time goes (nanogpt_time_seconds_total{phase}): the Trainer fetches
all of a step's batches (get_batch_samples: next() on its DataLoader once per
accumulated batch, moving each to the device) after the previous step's
on_step_end and its log, evaluation and save, and before the step's
on_step_begin; at an epoch's start, after on_epoch_begin. So a step's
data_wait is the time from the callback's last event before the fetch
(on_step_end, on_log, on_evaluate, on_save or on_epoch_begin, whichever came
last) to its on_step_begin. Callbacks listed after this one in those events,
and before it in on_step_begin, run inside that span: list it last. With
accelerate's default blocking copy to a GPU the span also holds the wait for
the device to finish the previous step (docs/loops.md). An evaluation's
`eval` seconds are the Trainer's own `eval_runtime` (any `*_runtime` in
on_evaluate's metrics, with or without an eval loss); a save's `checkpoint`
seconds run from the callback's last event before it (on_step_end, on_log or
on_evaluate) to on_save.

transformers is imported when `MonitorCallback` is first looked up, not
with this module, so `import nanogpt_monitor` needs no transformers.
"""

from __future__ import annotations

import functools
import os
import time

from .run import MonitoredRun, guarded_hook

__all__ = ["MonitorCallback"]

# log entries with a metric of their own; every other number goes to nanogpt_logged_scalar
_MAPPED = {"loss", "learning_rate", "grad_norm"}


def _dtype(args) -> str:
    return "bfloat16" if getattr(args, "bf16", False) else "float16" if getattr(args, "fp16", False) else "float32"


def _count_input_tokens(counter: list, module, args, kwargs) -> None:
    """Forward pre-hook: add the training batch's token count (input_ids' shape) to counter[0]."""
    try:
        if module.training:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if hasattr(ids, "numel"):
                counter[0] += ids.numel()  # from the shape: no device sync
    except Exception:  # a batch of another form: tokens/s is simply not shown
        pass


@functools.cache
def _callback_class():
    from transformers import TrainerCallback  # lazily: only users of this adapter need transformers

    class MonitorCallback(TrainerCallback):
        """Exports a Trainer's run to Prometheus and the live page; see nanogpt_monitor.hf."""

        def __init__(self, run_id: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                     metrics_log: str | None = None, linger_seconds: float = 0.0, dataset: str = "",
                     web_config=None):
            """`port`: the node's monitor's (0 = a free one); `linger_seconds`: keep serving after the process
            is done, so Prometheus scrapes the end; `run_id`: shared by all ranks (default generated)."""
            self.run = MonitoredRun(run_id=run_id, host=host, port=port, metrics_log=metrics_log,
                                    linger_seconds=linger_seconds, web_config=web_config)
            self.dataset = dataset
            self._tokens = [0]  # tokens since the last optimizer step, added by the forward hook
            self._hook = None
            self._extra: dict = {}  # eval figures, sent with the next log point
            self._mark = None  # perf_counter of this callback's last event between two steps (docstring)
            self._data = 0.0  # seconds this step's batches took to fetch, for its on_step_end

        @guarded_hook
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.run.start(max_iterations=state.max_steps, model=model, start_iteration=state.global_step,
                           dataset=self.dataset, device=str(args.device), dtype=_dtype(args),
                           world_size=args.world_size)
            if model is not None and self._hook is None:
                self._hook = model.register_forward_pre_hook(
                    functools.partial(_count_input_tokens, self._tokens), with_kwargs=True)

        def _marked(self) -> None:
            """Between two steps (after on_step_end or on_epoch_begin), this event's time is the mark."""
            if self._mark is not None:
                self._mark = time.perf_counter()

        @guarded_hook
        def on_epoch_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()  # the epoch's DataLoader iterator and first fetch come next

        @guarded_hook
        def on_step_begin(self, args, state, control, **kwargs):
            if self._mark is not None:
                self._data, self._mark = time.perf_counter() - self._mark, None

        @guarded_hook
        def on_step_end(self, args, state, control, **kwargs):
            self.run.step(state.global_step, self._tokens[0], data_seconds=self._data)
            self._tokens[0], self._data = 0, 0.0
            self._mark = time.perf_counter()

        @guarded_hook
        def on_log(self, args, state, control, logs=None, **kwargs):
            self._marked()  # after the loss's gather and .item() (a sync): the step's, not the fetch's
            logs = logs or {}
            if "loss" not in logs:  # an eval or end-of-training summary: no training loss to log
                return
            scalars = {**self._extra, **{k: v for k, v in logs.items() if k not in _MAPPED
                                         and isinstance(v, (int, float)) and not isinstance(v, bool)}}
            self._extra = {}
            self.run.log(state.global_step, logs["loss"], lr=logs.get("learning_rate"),
                         grad_norm=logs.get("grad_norm"), scalars=scalars)

        @guarded_hook
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            self._extra.update({k: v for k, v in metrics.items() if k != "eval_loss"
                                and isinstance(v, (int, float)) and not isinstance(v, bool)})
            seconds = next((v for k, v in metrics.items() if k.endswith("_runtime")
                            and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            if "eval_loss" in metrics or seconds:  # without a loss too: its seconds are eval's, not step's
                self.run.evaluated(state.global_step, metrics.get("eval_loss"), seconds=seconds)
            self._marked()

        @guarded_hook
        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            seconds = time.perf_counter() - self._mark if self._mark is not None else None
            self.run.checkpoint_saved(state.global_step, path=path, seconds=seconds)
            self._marked()

        @guarded_hook
        def on_train_end(self, args, state, control, **kwargs):
            self._mark = None
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self.run.end(state.global_step, "finished")

    return MonitorCallback


def __getattr__(name: str):
    if name == "MonitorCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
