"""The training loop, after karpathy/nanoGPT's train.py, as a function: train(config, observer).

Single process: `train(TrainConfig(...))`. Under DDP the caller (nanogpt.cli)
has already called init_process_group; train() reads rank and world size from
torch.distributed, syncs gradients only on each iteration's last micro-step,
and lets only rank 0 evaluate, print and checkpoint.

The observer (nanogpt.events) hears about the run through plain Python
numbers. The only host-device syncs are nanoGPT's own: `loss.item()` at log
points (and the grad norm read in the same place) and the evaluations.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt import events
from nanogpt.allreduce_wait import AllReduceWait
from nanogpt.checkpoint import CKPT_NAME, CheckpointError, check_model_args, load_checkpoint, save_checkpoint
from nanogpt.config import ConfigError, TrainConfig, validate
from nanogpt.data import CharDataset, DataError, get_batch, load_dataset
from nanogpt.device import (autocast, known_peak_flops, out_of_memory_reason, resolve_device, resolve_dtype,
                            synchronize)
from nanogpt.model import GPT, GPTConfig

__all__ = ["train", "TrainResult", "StopRequest", "OutOfMemory", "get_lr", "estimate_loss"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What train() returns: how the run ended and the figures a caller may want."""

    run_id: str  # the config's ('' when the caller named none; nanogpt-train always does)
    state: str  # "finished" or "failed"
    reason: str  # why it failed; "" when finished
    iteration: int  # the last iteration trained (the start iteration if none was)
    iterations_run: int  # iterations trained by this process
    last_loss: float | None  # training loss at the last log point
    best_val_loss: float
    checkpoint_errors: int  # saves that failed (logged; training went on)
    param_digest: str  # sha256 of the final weights; equal on every DDP rank
    stopped: bool = False  # ended early on a StopRequest (e.g. SIGTERM), after a final checkpoint


class StopRequest:
    """Asks a running train() to stop after the current iteration and save a final checkpoint.

    request() only stores a string (no locks, no I/O), so a signal handler or another
    thread may call it at any moment; the loop reads it between iterations.
    """

    def __init__(self) -> None:
        self.reason = ""  # why, e.g. "terminated by SIGTERM"; "" while nobody asked

    def request(self, reason: str) -> None:
        if not self.reason:  # the first reason wins
            self.reason = reason


class OutOfMemory(RuntimeError):
    """CUDA ran out of memory during the run; the message has the figures (one line)."""


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Learning rate at iteration it: linear warmup, then cosine decay to min_lr (nanoGPT's schedule)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)  # 0..1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1..0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, data: CharDataset, cfg: TrainConfig, device: torch.device, ctx
) -> dict[str, float]:
    """Mean loss over eval_iters random batches of each split, in eval mode."""
    out = {}
    model.eval()
    for split, tokens in (("train", data.train), ("val", data.val)):
        losses = torch.zeros(cfg.eval_iters, device=device)
        for k in range(cfg.eval_iters):
            X, Y = get_batch(tokens, cfg.batch_size, cfg.block_size, device)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss
        out[split] = losses.mean().item()  # one sync per split
    model.train()
    return out


@torch.no_grad()
def write_sample(model, data: CharDataset, cfg: TrainConfig, prompt: str, device: torch.device, ctx,
                 iter_num: int) -> events.Sample:
    """cfg.sample_chars characters after `prompt`, as nanogpt-sample writes them (temperature 0.8,
    top-k 200), from seed cfg.seed every time. The RNG of training is forked and restored, so
    the run's batches, dropout and loss curve are what they would be without a sample."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(cfg.seed)
        model.eval()
        x = torch.tensor([data.encode(prompt)], dtype=torch.long, device=device)
        with ctx:
            y = model.generate(x, cfg.sample_chars, temperature=0.8, top_k=200)
        model.train()
    return events.Sample(iter_num, data.decode(y[0].tolist()), prompt, time.perf_counter() - t0, time.time())


def _try_sample(model, data: CharDataset, cfg: TrainConfig, prompt: str, device: torch.device, ctx,
                iter_num: int) -> events.Sample | None:
    """write_sample, or None (with a warning) when the model cannot write: a sample is for the page,
    and weights gone NaN (multinomial refuses their probabilities) must not end a run that its own
    checks (--stop_on_nonfinite, the alerts) are there to judge. Out of memory still goes up."""
    try:
        return write_sample(model, data, cfg, prompt, device, ctx, iter_num)
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as e:
        log.warning("no sample at iteration %d: %s", iter_num, str(e).splitlines()[0])
        return None


def _sample_prompt(cfg: TrainConfig, data: CharDataset) -> str:
    """The prompt to sample from; one with characters the data lacks is a ConfigError before training
    (the default newline, in a text without one, becomes the text's first character)."""
    try:
        data.encode(cfg.sample_prompt)
        return cfg.sample_prompt
    except DataError as e:
        if cfg.sample_prompt == TrainConfig.sample_prompt and len(data.train):
            return data.decode([int(data.train[0])])
        raise ConfigError(f"sample_prompt: {e}; give another or --sample_chars 0") from None


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _any_rank(flag: bool, ddp: bool, device: torch.device) -> bool:
    """True if flag is True on any rank (a collective: every rank must call it)."""
    if not ddp:
        return flag
    t = torch.tensor([float(flag)], device=device)  # nccl reduces only device tensors
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_args: dict, iter_num: int,
                best_val_loss: float, cfg: TrainConfig, vocab: tuple[str, ...]) -> dict:
    """nanoGPT's checkpoint dict, plus the vocabulary; iter_num is the next iteration to train."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
            "iter_num": iter_num, "best_val_loss": best_val_loss, "config": cfg.to_dict(), "vocab": list(vocab)}


def _save(cfg: TrainConfig, state: dict, iter_num: int, notify: events.SafeObserver) -> bool:
    """Save a checkpoint; a failed save is logged and reported, and training goes on."""
    path = Path(cfg.out_dir) / CKPT_NAME
    log.info("saving checkpoint to %s", path)  # as nanoGPT prints it; a save can take a while
    t0 = time.perf_counter()
    try:
        save_checkpoint(state, path)
    except (OSError, RuntimeError) as e:
        log.error("error: could not save checkpoint to %s (%s); the previous one is kept, training goes on", path, e)
        notify.on_checkpoint_failed(events.CheckpointFailed(iter_num, str(path), str(e), time.time()))
        return False
    seconds = time.perf_counter() - t0
    log.info("saved checkpoint to %s (%.2fs)", path, seconds)
    notify.on_checkpoint(events.CheckpointSaved(iter_num, str(path), seconds, time.time()))
    return True


def _weights_finite(model: torch.nn.Module) -> bool:
    """No NaN or inf in any parameter (syncs with the device: for the final save only)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(config: TrainConfig, observer: events.Observer | None = None, stop: StopRequest | None = None) -> TrainResult:
    """Train per config, reporting to observer; returns how the run ended.

    Bad data, config or checkpoint raise DataError / ConfigError / CheckpointError
    before training starts. An exception during training is reported to the
    observer as a failed run and re-raised. A `stop` request ends the run
    "finished" (with its reason) after the current iteration and a final checkpoint.
    """
    cfg = config
    validate(cfg)
    notify = events.SafeObserver(observer)
    ddp = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    node = int(os.environ.get("GROUP_RANK", 0)) if ddp else 0  # torchrun's node rank (multi-node runs)
    master = rank == 0  # only rank 0 evaluates, prints and checkpoints
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise ConfigError(
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of "
            f"the world size {world_size} (it counts micro-steps over all ranks, as in nanoGPT)"
        )
    gas = cfg.gradient_accumulation_steps // world_size  # micro-steps per rank
    tokens_per_iter = gas * cfg.batch_size * cfg.block_size  # per rank
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if master:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        log.info("tokens per iteration will be: %s (per rank: %s)", f"{tokens_per_iter * world_size:,}",
                 f"{tokens_per_iter:,}")  # fmt: skip
    torch.manual_seed(cfg.seed + rank)  # different batches on each rank
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ctx = autocast(device, dtype)

    data = load_dataset(cfg.dataset, cfg.data_file, cfg.block_size, cfg.data_cache_dir)
    prompt = _sample_prompt(cfg, data) if cfg.sample_chars else ""
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=data.vocab_size, dropout=cfg.dropout)  # fmt: skip
    checkpoint = None
    if cfg.init_from == "resume":
        ckpt_path = Path(cfg.out_dir) / CKPT_NAME
        checkpoint = load_checkpoint(ckpt_path, device)
        check_model_args(checkpoint, model_args, ckpt_path)
        if tuple(checkpoint["vocab"]) != data.chars:
            raise CheckpointError(f"checkpoint {str(ckpt_path)!r} was trained on another vocabulary than {data.name!r}")
    raw_model = GPT(GPTConfig(**model_args))
    iter_num, best_val_loss = 0, 1e9
    if checkpoint is not None:
        try:
            raw_model.load_state_dict(checkpoint["model"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint weights do not fit the model: {str(e).splitlines()[0]}") from None
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    raw_model.to(device)
    if master:
        log.info("number of parameters: %.2fM", raw_model.get_num_params() / 1e6)
    # GradScaler only for float16; disabled it is a pass-through (and silent on CPU)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                               device.type)  # fmt: skip
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    checkpoint = None  # free up memory
    fwd_model = torch.compile(raw_model) if cfg.compile else raw_model
    model = DDP(fwd_model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else fwd_model
    allreduce_wait = None  # the host waits for the gradient all-reduce only under gloo (nanogpt.allreduce_wait)
    if ddp and dist.get_backend() == "gloo":
        allreduce_wait = AllReduceWait()
        model.register_comm_hook(None, allreduce_wait.hook)
    peak_flops = cfg.peak_flops or known_peak_flops(device, dtype)  # None: MFU is no figure here

    start_iter, start_time = iter_num, time.time()
    notify.on_run_start(events.RunStart(
        run_id=cfg.run_id, rank=rank, world_size=world_size, start_iteration=start_iter,
        max_iterations=cfg.max_iters, tokens_per_iteration=tokens_per_iter, model_config=dict(model_args),
        parameters=raw_model.parameter_counts(), dataset=data.name, device=str(device), dtype=dtype,
        config=cfg.to_dict(), start_time=start_time, node=node,
        model=raw_model))  # fmt: skip
    state, reason, lossf, local_iter, checkpoint_errors, stopped = "finished", "", None, 0, 0, False
    try:
        # host time spent getting batches (TorchTitan's "data loading time"): the loop waits on it
        data_started = time.perf_counter()
        X, Y = get_batch(data.train, cfg.batch_size, cfg.block_size, device)  # the very first batch
        data_seconds = time.perf_counter() - data_started
        # step timing spans log point to log point (both syncs), minus evals and saves in between
        span_start, span_steps, span_excluded = time.perf_counter(), 0, 0.0
        while iter_num <= cfg.max_iters:
            lr = get_lr(iter_num, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr

            is_eval = iter_num % cfg.eval_interval == 0 or (cfg.eval_only and local_iter == 0)
            if is_eval and master:
                t0 = time.perf_counter()
                synchronize(device)  # keep queued training work out of the eval time
                losses = estimate_loss(fwd_model, data, cfg, device, ctx)
                eval_seconds = time.perf_counter() - t0
                log.info("step %d: train loss %.4f, val loss %.4f, eval %.2fs",
                         iter_num, losses["train"], losses["val"], eval_seconds)  # fmt: skip
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])  # nanoGPT overwrites it under always_save
                notify.on_eval(events.EvalResult(iter_num, losses["train"], losses["val"], best_val_loss,
                                                    eval_seconds, time.time()))  # fmt: skip
                if cfg.sample_chars:
                    sample = _try_sample(raw_model, data, cfg, prompt, device, ctx, iter_num)
                    if sample is not None:
                        notify.on_sample(sample)
                if not math.isfinite(losses["val"]):
                    log.warning("not saving a checkpoint: val loss is %s", losses["val"])
                elif (improved or cfg.always_save_checkpoint) and iter_num > 0:
                    ckpt = _checkpoint(raw_model, optimizer, model_args, iter_num, best_val_loss, cfg, data.chars)
                    checkpoint_errors += not _save(cfg, ckpt, iter_num, notify)
                span_excluded += time.perf_counter() - t0
            if cfg.eval_only:
                break

            # a stop request is honoured after a logged iteration, so the last one trained is logged;
            # alone, the loop logs the iteration it sees a request before (under DDP ranks learn of
            # it at different times, so they agree on it at the next regular log point instead)
            stopping = stop is not None and not ddp and bool(stop.reason)
            logged = iter_num % cfg.log_interval == 0 or is_eval or iter_num == cfg.max_iters or stopping

            for micro_step in range(gas):
                if ddp:
                    # all-reduce gradients only on the last micro-step (nanoGPT's no_sync equivalent)
                    model.require_backward_grad_sync = micro_step == gas - 1
                with ctx:
                    _, loss = model(X, Y)
                    loss = loss / gas  # scale: gradients add up over micro-steps
                # fetch the next batch while the device works on the forward pass
                data_started = time.perf_counter()
                X, Y = get_batch(data.train, cfg.batch_size, cfg.block_size, device)
                data_seconds += time.perf_counter() - data_started
                scaler.scale(loss).backward()
            grad_norm = None  # a device tensor: read (synced) only at log points
            if cfg.grad_clip != 0.0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            span_steps += 1
            sync_seconds = allreduce_wait.take() if allreduce_wait is not None else None
            notify.on_iteration(events.Iteration(iter_num, tokens_per_iter, time.time(), data_seconds, sync_seconds))
            data_seconds = 0.0

            if logged:
                lossf = loss.item() * gas  # CPU-GPU sync point, as in nanoGPT
                grad_normf = grad_norm.item() if grad_norm is not None else None
                step_seconds = (time.perf_counter() - span_start - span_excluded) / span_steps
                mfu = None
                if peak_flops and local_iter >= 5:  # let the first steps (allocation, warm-up) pass
                    mfu = raw_model.estimate_mfu(cfg.batch_size * gas, step_seconds, peak_flops)
                if master:
                    eta = time.strftime("%H:%M:%S", time.gmtime((cfg.max_iters - iter_num) * step_seconds))
                    mfu_text = f"{mfu * 100:.2f}%" if mfu is not None else "n/a"
                    log.info("iter %d: loss %.4f, time %.2fms, tok/s %.0f, mfu %s, eta %s", iter_num, lossf,
                             step_seconds * 1000, tokens_per_iter / step_seconds, mfu_text, eta)  # fmt: skip
                notify.on_log(events.LogPoint(
                    iteration=iter_num, loss=lossf, lr=lr, step_seconds=step_seconds,
                    tokens_per_second=tokens_per_iter / step_seconds, grad_norm=grad_normf, mfu=mfu,
                    elapsed_seconds=time.time() - start_time, timestamp=time.time()))  # fmt: skip
                if cfg.stop_on_nonfinite and _any_rank(not math.isfinite(lossf), ddp, device):
                    state, reason = "failed", f"non-finite loss at iteration {iter_num}"
                    log.error("stopping: %s; the last checkpoint is kept", reason)
                span_start, span_steps, span_excluded = time.perf_counter(), 0, 0.0
            iter_num += 1
            local_iter += 1
            if state == "failed":
                break
            if stop is not None and logged and _any_rank(bool(stop.reason), ddp, device):  # one collective under DDP
                stopped, reason = True, stop.reason or "stopped by another rank"
                log.info("stopping: %s; saving a final checkpoint at iteration %d", reason, iter_num)
                break
        if stopped and master and local_iter > 0:
            if _weights_finite(raw_model):  # never replace a good checkpoint with a diverged model
                ckpt = _checkpoint(raw_model, optimizer, model_args, iter_num, best_val_loss, cfg, data.chars)
                checkpoint_errors += not _save(cfg, ckpt, iter_num, notify)
            else:
                log.warning("not saving a final checkpoint: the weights are not finite; the last one is kept")
    except BaseException as e:
        oom = isinstance(e, torch.cuda.OutOfMemoryError)  # say how far over it went, in one line
        reason = (out_of_memory_reason(e, device, iter_num, (cfg.batch_size, cfg.block_size), gas) if oom
                  else f"{type(e).__name__}: {e}")
        notify.on_run_end(events.RunEnd(max(start_iter, iter_num - 1), "failed", reason, time.time()))
        if oom:
            raise OutOfMemory(reason) from e
        raise
    last_iter = max(start_iter, iter_num - 1)
    notify.on_run_end(events.RunEnd(last_iter, state, reason, time.time()))
    return TrainResult(run_id=cfg.run_id, state=state, reason=reason, iteration=last_iter, iterations_run=local_iter,
                       last_loss=lossf, best_val_loss=best_val_loss, checkpoint_errors=checkpoint_errors,
                       param_digest=_param_digest(raw_model), stopped=stopped)  # fmt: skip


if __name__ == "__main__":  # nanoGPT's habit; here the loop is a function and the entry point is nanogpt.cli
    print("error: run `python -m nanogpt` or `nanogpt-train`", file=sys.stderr)
    raise SystemExit(2)
