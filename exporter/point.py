"""One logged iteration (`Point`) and its text: JSON made once per point, CSV rows.

Non-finite floats are kept as floats in memory and written as JSON null (JSON
has no NaN); readers get None back for them. Each point's JSON text, and each
field's, is made once when it is first asked for (on the training thread, as
the history appends it), so serving a long history is a join of cached strings.

Deliberately not here: keeping points (exporter.history, exporter.tables).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Iterable, Iterator, Optional


@dataclass(frozen=True)
class Point:
    """One logged iteration. JSON keys and CSV columns are these field names, in this order."""

    iteration: int
    loss: float
    lr: Optional[float] = None
    step_seconds: Optional[float] = None
    tokens_per_second: Optional[float] = None
    elapsed_seconds: Optional[float] = None
    timestamp: Optional[float] = None  # unix seconds
    grad_norm: Optional[float] = None
    mfu: Optional[float] = None
    loss_ema: Optional[float] = None
    val_loss: Optional[float] = None  # only where an eval ran at this iteration
    eval_train_loss: Optional[float] = None

    def to_json(self) -> dict:
        """A JSON-safe dict: non-finite floats become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @cached_property
    def json_values(self) -> tuple[str, ...]:
        """Each field's JSON text, in COLUMNS order (float repr is the shortest round-trip form,
        the text json.dumps writes; non-finite floats are null). Made once per point."""
        return tuple(_json_number(getattr(self, name)) for name in COLUMNS)

    @cached_property
    def json(self) -> str:
        """The compact JSON text of `to_json()`, made once per point (~5 us against ~50 us for a dict walk)."""
        return _POINT_TEMPLATE % self.json_values

    @classmethod
    def from_json(cls, data: dict) -> "Point":
        """The point a `to_json` dict came from (unknown keys ignored; ValueError if malformed)."""
        if not isinstance(data, dict) or not isinstance(data.get("iteration"), int):
            raise ValueError("a history point needs an integer iteration")
        values = {f.name: data.get(f.name) for f in fields(cls)}
        for name, value in values.items():
            if name != "iteration" and value is not None and not isinstance(value, (int, float)):
                raise ValueError(f"history field {name} is not a number: {value!r}")
        return cls(**values)


COLUMNS = tuple(f.name for f in fields(Point))
NUMBERS = ("iteration", "loss", "val_loss")  # the fields an overview reads, kept as C doubles too
_POINT_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in COLUMNS) + "}"


def _json_number(value) -> str:
    """JSON text of a field value: float repr is the shortest round-trip form, as json.dumps writes it."""
    if value is None:
        return "null"
    if value.__class__ is float:
        return repr(value) if math.isfinite(value) else "null"
    return json.dumps(value)


CSV_HEADER = ",".join(COLUMNS) + "\n"  # plain identifiers: nothing to quote


def csv_row(texts: Iterable[str]) -> str:
    """One CSV row from a point's fields' JSON text: numbers need no quoting; null is an empty cell."""
    return ",".join("" if v == "null" else v for v in texts) + "\n"


def csv_lines(points: Iterable[Point]) -> Iterator[str]:
    """The header row, then one CSV row per point (empty cells for None and non-finite values)."""
    yield CSV_HEADER
    for point in points:
        yield csv_row(point.json_values)
