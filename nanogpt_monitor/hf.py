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

transformers is imported when `MonitorCallback` is first looked up, not
with this module, so `import nanogpt_monitor` needs no transformers.
"""

from __future__ import annotations

import functools
import os

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

        @guarded_hook
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.run.start(max_iterations=state.max_steps, model=model, start_iteration=state.global_step,
                           dataset=self.dataset, device=str(args.device), dtype=_dtype(args),
                           world_size=args.world_size)
            if model is not None and self._hook is None:
                self._hook = model.register_forward_pre_hook(
                    functools.partial(_count_input_tokens, self._tokens), with_kwargs=True)

        @guarded_hook
        def on_step_end(self, args, state, control, **kwargs):
            self.run.step(state.global_step, self._tokens[0])
            self._tokens[0] = 0

        @guarded_hook
        def on_log(self, args, state, control, logs=None, **kwargs):
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
            if "eval_loss" in metrics:
                self.run.evaluated(state.global_step, metrics["eval_loss"], seconds=metrics.get("eval_runtime"))

        @guarded_hook
        def on_save(self, args, state, control, **kwargs):
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self.run.checkpoint_saved(state.global_step, path=path)

        @guarded_hook
        def on_train_end(self, args, state, control, **kwargs):
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self.run.end(state.global_step, "finished")

    return MonitorCallback


def __getattr__(name: str):
    if name == "MonitorCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
