"""The bodies the HTTP routes send, as bytes: strict JSON of the status and the model.

Deliberately not here: HTTP (exporter.routes, exporter.stream), computing the
figures (exporter.monitor, exporter.status), the page (exporter.page).
"""

from __future__ import annotations

import json
import math
from typing import Any


def json_bytes(value: Any) -> bytes:
    """Strict JSON (non-finite floats as null, which JSON.parse accepts; NaN would not be)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, separators=(",", ":")).encode()


def status_json(monitor: Any) -> bytes:
    """The /api/status body of an exporter.monitor.TrainingMonitor."""
    status = monitor.status()
    if status is None:  # status() is guarded: it counted and logged its error
        raise RuntimeError("status snapshot failed")
    return json_bytes(status)


def model_json(monitor: Any) -> bytes:
    """The /api/model body."""
    return json_bytes(monitor.model())
