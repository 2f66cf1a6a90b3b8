"""Samples of what the model writes, one per evaluation: bounded, plain text, newest first.

A sample is untrusted text (the model's, the prompt the user gave): it is cut to MAX_CHARS here,
where it enters, and every renderer escapes it (JSON by encoding, the page by html.escape and
textContent). In the metrics log a sample is a line of its own, told apart from a point by its
"sample" key.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

MAX_CHARS = 2_000  # a sample longer than this is cut (the trainer's default asks for 200)
MAX_PROMPT_CHARS = 200
MAX_KEPT = 1_000  # in the monitor's memory per rank: ~2 MB at most; the metrics log keeps them all
MAX_PAGE = 100  # the most one /api/samples answer holds
TRUNCATED = "\u2026"


@dataclass(frozen=True)
class Sample:
    iteration: int
    text: str
    prompt: str = ""
    timestamp: Optional[float] = None  # unix seconds
    seconds: Optional[float] = None  # how long generating it took

    @classmethod
    def bounded(cls, iteration: int, text: Any, prompt: Any = "", timestamp: Optional[float] = None,
                seconds: Optional[float] = None) -> "Sample":
        """A sample from what a loop handed over: text cut to MAX_CHARS, numbers checked."""
        return cls(int(iteration), _cut(str(text), MAX_CHARS), _cut(str(prompt or ""), MAX_PROMPT_CHARS),
                   _seconds(timestamp), _seconds(seconds))

    @classmethod
    def from_json(cls, data: Any) -> "Sample":
        """A sample as a journal or metrics-log line carries it (re-bounded: the file is input too)."""
        if not isinstance(data, dict) or not isinstance(data.get("iteration"), int) or "sample" not in data:
            raise ValueError("a sample needs an integer iteration and its text")
        return cls.bounded(data["iteration"], data["sample"], data.get("prompt", ""), data.get("timestamp"),
                           data.get("seconds"))

    def to_json(self) -> dict:
        """The line's fields: `sample` holds the text (the key that tells a sample line from a point)."""
        fields = asdict(self)
        fields["sample"] = fields.pop("text")
        return fields

    @property
    def json(self) -> str:
        """One line of JSON text (no newline), as the metrics log holds it."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + TRUNCATED


def _seconds(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class Samples:
    """A rank's newest MAX_KEPT samples in iteration order; a re-logged iteration replaces its sample."""

    def __init__(self) -> None:
        self._items: list[Sample] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, sample: Sample) -> None:
        items = self._items
        while items and items[-1].iteration >= sample.iteration:  # a resume re-runs those iterations
            items.pop()
        items.append(sample)
        if len(items) > MAX_KEPT:
            del items[: len(items) - MAX_KEPT]

    def truncate(self, through: int) -> None:
        """Drop the samples after iteration `through` (a resume from an earlier checkpoint)."""
        while self._items and self._items[-1].iteration > through:
            self._items.pop()

    def newest(self) -> Optional[Sample]:
        return self._items[-1] if self._items else None

    def page(self, limit: int, before: Optional[int] = None) -> tuple[list[Sample], bool]:
        """Up to `limit` samples, newest first, all before iteration `before` when given; and
        whether older ones remain."""
        end = len(self._items) if before is None else bisect.bisect_left(self._items, before, key=lambda s: s.iteration)
        start = max(0, end - limit)
        return self._items[start:end][::-1], start > 0
