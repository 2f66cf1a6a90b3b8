"""Which points an overview keeps: about two per pixel column, spikes, evaluations and NaN gaps kept.

The /api/history?points=N answer (and the overview the live page carries) is
the subset of a range that overview_indices picks. numpy is imported here only,
when an overview is made: the exporter alone does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np


def overview_indices(iterations: Sequence[float], loss: Sequence[float], val_loss: Sequence[float],
                     buckets: int) -> list[int]:
    """Which of these points (iteration order) an overview `buckets` wide keeps: all of them when
    there are at most two per bucket; else the first and the last, and in each bucket (an equal
    span of iterations, like a pixel column) the points with the lowest and the highest loss and
    val_loss and the first non-finite loss, so spikes, evaluations and NaN gaps stay visible.
    O(n) in numpy: 100k points in a few milliseconds."""
    import numpy as np

    n = len(iterations)
    if n <= 2 * buckets:
        return list(range(n))
    iterations, loss, val_loss = (np.asarray(column, dtype=np.float64) for column in (iterations, loss, val_loss))
    span = iterations[-1] - iterations[0] + 1
    bucket = ((iterations - iterations[0]) * buckets // span).astype(np.int64)  # nondecreasing
    keep = [np.array([0, n - 1])]
    for values in (loss, val_loss):
        at = np.flatnonzero(np.isfinite(values))  # val_loss: only the evaluations
        if len(at):
            keep += _extremes(at, values[at], bucket[at])
    nonfinite = np.flatnonzero(~np.isfinite(loss))
    keep.append(nonfinite[_run_starts(bucket[nonfinite])])
    return np.unique(np.concatenate(keep)).tolist()


def _run_starts(bucket: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a nondecreasing array starts."""
    import numpy as np

    return np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else bucket


def _extremes(at: np.ndarray, values: np.ndarray, bucket: np.ndarray) -> list[np.ndarray]:
    """The indices (taken from `at`) of the first lowest and the first highest value of each bucket."""
    import numpy as np

    starts = _run_starts(bucket)
    counts = np.diff(np.r_[starts, len(values)])
    found = []
    for reduce in (np.minimum, np.maximum):
        hits = np.flatnonzero(values == np.repeat(reduce.reduceat(values, starts), counts))
        found.append(at[hits[_run_starts(bucket[hits])]])
    return found
