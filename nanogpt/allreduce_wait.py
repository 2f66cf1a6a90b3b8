"""How long this rank waited in DDP's gradient all-reduce after its own gradients were ready.

Under synchronous DDP every rank completes iterations at the same pace, so a slow rank (a
straggler) does not show in step time: it shows in the others waiting for it. AllReduceWait is a
DDP communication hook that runs PyTorch's own default all-reduce (`default_hooks.allreduce_hook`:
divide by the world size, sum; the same math as DDP's built-in reduction) and notes on the host
when the iteration's last gradient bucket was handed to it and when the reduction came back.
Their difference is the exposed communication: for a fast rank mostly waiting for the slowest,
for the slowest rank the transfer alone.

Only where the host blocks on the collective: gloo (CPU), where backward() returns after the
reduction. Under NCCL the host only enqueues it and the wait happens on the device; there the loop
reports no figure (None) rather than a near-zero one that would mean nothing.
"""

import time  # no `from __future__ import annotations`: DDP checks the hook's return annotation object

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


class AllReduceWait:
    """Register with `ddp_model.register_comm_hook(None, timer.hook)`; `take()` after each
    iteration's backward gives that iteration's wait in seconds (0.0 when no bucket was reduced:
    a gradient-accumulation micro-step)."""

    def __init__(self) -> None:
        self._handed_over = 0.0  # perf_counter when the latest bucket was handed over
        self._reduced = 0.0  # perf_counter when the latest reduction came back

    def hook(self, process_group, bucket) -> torch.futures.Future[torch.Tensor]:
        self._handed_over = time.perf_counter()
        return default_hooks.allreduce_hook(process_group, bucket).then(self._done)

    def _done(self, future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        self._reduced = time.perf_counter()
        return future.value()

    def take(self) -> float:
        """Seconds from the last bucket's hand-over to the last reduction's return, then reset."""
        wait = max(0.0, self._reduced - self._handed_over) if self._handed_over else 0.0
        self._handed_over = self._reduced = 0.0
        return wait
