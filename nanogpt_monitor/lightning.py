"""Lightning -> the monitor, in one line (pip install 'nanogpt-monitor[lightning]'):

    from nanogpt_monitor.lightning import MonitorCallback
    trainer = L.Trainer(max_steps=5000, callbacks=[MonitorCallback(port=8000)])

A thin mapping of Lightning's hooks to `MonitoredRun` (nanogpt_monitor.run), so a
LightningModule that logs nothing still shows loss, learning rate, grad norm,
throughput and ETA: on_train_start starts recording (on local rank 0 it starts
the node's monitor too) and describes the module (max_steps, or Lightning's
estimated stepping batches, for the ETA); each
completed optimizer step counts an iteration and the batch's tokens (from its
shape); every `log_every_n_steps` (the Trainer's by default) the mean
training_step loss since the last log point, the first optimizer's learning
rate, the grad norm before clipping, and everything the module `self.log`s
(as nanogpt_logged_scalar{key}) go to the monitor. A logged `val_loss` (or
`val/loss`) is the eval loss. on_exception (failed) and on_train_end
(finished) report the end. Device values are read (.item(), a sync) only at
log points, as Lightning's own loggers do.

Where the time goes (nanogpt_time_seconds_total{phase}): each validation run
(on_validation_start to on_validation_end, sanity checks left out) is `eval`,
with or without a logged loss. `data_wait` and `checkpoint` are the spans
Lightning itself profiles: it wraps every train batch fetch (the train
DataLoader's next(): "[_TrainingEpochLoop].train_dataloader_next") and every
Trainer.save_checkpoint ("save_checkpoint") in trainer.profiler's start/stop,
and the callback times those two actions by wrapping that profiler's
start/stop (every call passes on to it unchanged; put back at the end). The
time between on_train_batch_end and the next on_train_batch_start is not used:
besides the fetch it holds the other callbacks' hooks, validation, the saves
and, under several processes, Lightning's per-batch SIGTERM broadcast, a
collective whose .item() waits for the slower ranks and, on a GPU, for the
device to finish the step. The moves to the device after the fetch
(on_before_batch_transfer, transfer_batch_to_device) count as step. The
fetches of a step's batches (several, with gradient accumulation) are its
data_seconds.

Lightning is imported when `MonitorCallback` is first looked up, not with
this module, so `import nanogpt_monitor` needs no lightning.
"""

from __future__ import annotations

import functools
import time

from .run import MonitoredRun, guarded_hook

__all__ = ["MonitorCallback"]

VAL_LOSS_KEYS = ("val_loss", "val/loss")
# the actions Lightning's loops hand trainer.profiler around a train batch fetch and a checkpoint save
FETCH_ACTION, SAVE_ACTION = ".train_dataloader_next", "save_checkpoint"


def batch_tokens(batch) -> int:
    """Tokens in a batch of token ids: an integer tensor of 2+ dims, a dict's `input_ids`, or the
    first element of a tuple or list; 0 for any other form (tokens/s is then not shown)."""
    if isinstance(batch, dict):
        batch = batch.get("input_ids")
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    dtype = getattr(batch, "dtype", None)
    if dtype is not None and not dtype.is_floating_point and not dtype.is_complex and batch.dim() >= 2:
        return batch.numel()  # from the shape: no device sync
    return 0


def _timed(action_name) -> bool:
    """A profiled action the callback times: a train batch fetch or a checkpoint save."""
    return isinstance(action_name, str) and (action_name.endswith(FETCH_ACTION) or action_name == SAVE_ACTION)


def _grad_norm(module):
    """The total 2-norm of the module's gradients, as a device tensor (read at the log point)."""
    import torch

    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)


def _float(value):
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):  # not a scalar
        return None


@functools.cache
def _callback_class():
    import lightning.pytorch as pl  # lazily: only users of this adapter need lightning

    class MonitorCallback(pl.Callback):
        """Exports a Lightning run to Prometheus and the live page; see nanogpt_monitor.lightning."""

        def __init__(self, run_id: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                     metrics_log: str | None = None, linger_seconds: float = 0.0, dataset: str = "",
                     log_every_n_steps: int | None = None, web_config=None):
            """`port`: the node's monitor's (0 = a free one); `linger_seconds`: keep serving after the process
            is done; `log_every_n_steps`: default the Trainer's own."""
            self.run = MonitoredRun(run_id=run_id, host=host, port=port, metrics_log=metrics_log,
                                    linger_seconds=linger_seconds, web_config=web_config)
            self.dataset, self.log_every_n_steps = dataset, log_every_n_steps
            self._tokens, self._step, self._loss_sum, self._loss_count = 0, 0, None, 0
            self._grad_norm = None
            self._val_start = None  # (perf_counter, seconds saved so far) at on_validation_start
            self._data = 0.0  # seconds of train batch fetches since the last optimizer step
            self._saved = 0.0  # seconds of all checkpoint saves so far
            self._began: dict = {}  # profiled action -> perf_counter at its start
            self._profiler = None  # (profiler, its own start and stop attributes) while wrapped

        def _every(self, trainer) -> int:
            return max(1, self.log_every_n_steps or trainer.log_every_n_steps or 1)

        @guarded_hook
        def on_train_start(self, trainer, pl_module):
            total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches  # -1: unset
            self._step = trainer.global_step
            self.run.start(max_iterations=int(total) if total != float("inf") else 0, model=pl_module,
                           start_iteration=trainer.global_step, dataset=self.dataset, device=str(pl_module.device),
                           dtype=str(trainer.precision), world_size=trainer.world_size)
            self._time_profiled_actions(trainer)

        def _time_profiled_actions(self, trainer) -> None:
            """Wrap trainer.profiler's start/stop to time the fetches and saves Lightning profiles
            (module docstring); every call goes on to the profiler's own start/stop unchanged."""
            self._restore_profiler()
            profiler = trainer.profiler
            own = {name: vars(profiler).get(name) for name in ("start", "stop")}  # None: the class's method
            start, stop = profiler.start, profiler.stop

            def timed_start(action_name, *args, **kwargs):
                result = start(action_name, *args, **kwargs)
                if _timed(action_name):
                    self._began[action_name] = time.perf_counter()  # after the profiler's own work
                return result

            def timed_stop(action_name, *args, **kwargs):
                began = self._began.pop(action_name, None) if _timed(action_name) else None
                if began is not None:
                    self._ended(trainer, action_name, time.perf_counter() - began)
                return stop(action_name, *args, **kwargs)

            profiler.start, profiler.stop = timed_start, timed_stop
            self._profiler = (profiler, own)

        def _ended(self, trainer, action_name: str, seconds: float) -> None:
            if action_name == SAVE_ACTION:
                self._saved += seconds
                self.run.checkpoint_saved(trainer.global_step, seconds=seconds)  # guarded inside the run
            else:
                self._data += seconds

        def _restore_profiler(self) -> None:
            if self._profiler is not None:
                (profiler, own), self._profiler = self._profiler, None
                for name, method in own.items():
                    if method is None:
                        vars(profiler).pop(name, None)  # the class's method again
                    else:
                        setattr(profiler, name, method)

        @guarded_hook
        def teardown(self, trainer, pl_module, stage):
            self._restore_profiler()

        @guarded_hook
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._tokens += batch_tokens(batch)

        @guarded_hook
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if (trainer.global_step + 1) % self._every(trainer) == 0:  # the step about to complete logs
                self._grad_norm = _grad_norm(pl_module)

        @guarded_hook
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None and hasattr(loss, "detach"):
                loss = loss.detach()  # summed on the device: no sync until the log point
                self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
                self._loss_count += 1
            if trainer.global_step == self._step:
                return  # gradient accumulation: no optimizer step yet
            self._step = trainer.global_step
            self.run.step(self._step, self._tokens, data_seconds=self._data)
            self._tokens, self._data = 0, 0.0
            if self._step % self._every(trainer) == 0 and self._loss_count:
                self._log(trainer)

        def _log(self, trainer) -> None:
            loss = _float(self._loss_sum / self._loss_count)  # a sync, at log points only
            self._loss_sum, self._loss_count = None, 0
            grad_norm, self._grad_norm = _float(self._grad_norm) if self._grad_norm is not None else None, None
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
            scalars = {k: v for k, v in ((k, _float(v)) for k, v in trainer.callback_metrics.items())
                       if v is not None}
            self.run.log(self._step, loss, lr=lr, grad_norm=grad_norm, scalars=scalars)

        @guarded_hook
        def on_validation_start(self, trainer, pl_module):
            self._val_start = (time.perf_counter(), self._saved)

        @guarded_hook
        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or self._val_start is None:
                return
            (started, saved), self._val_start = self._val_start, None
            seconds = time.perf_counter() - started - (self._saved - saved)  # a save inside is checkpoint's
            metrics = trainer.callback_metrics
            key = next((k for k in VAL_LOSS_KEYS if k in metrics), None)
            # reported without a loss too: its seconds are eval's, not step's
            self.run.evaluated(trainer.global_step, _float(metrics[key]) if key is not None else None,
                               seconds=seconds)

        @guarded_hook
        def on_exception(self, trainer, pl_module, exception):
            self._restore_profiler()
            if isinstance(exception, KeyboardInterrupt):  # Lightning stops cleanly on Ctrl-C
                self.run.end(trainer.global_step, "finished", reason="interrupted")
            else:
                self.run.end(trainer.global_step, "failed", reason=f"{type(exception).__name__}: {exception}")

        @guarded_hook
        def on_train_end(self, trainer, pl_module):
            self._restore_profiler()
            self.run.end(trainer.global_step, "finished")

    return MonitorCallback


def __getattr__(name: str):
    if name == "MonitorCallback":
        return _callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
