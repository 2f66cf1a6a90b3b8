"""The three layers of the suite, marked from the folder a test sits in.

    tests/unit         no socket, no subprocess (tests/unit/conftest.py forbids both): `-m unit`
    tests/integration  real sockets and processes on 127.0.0.1: the monitor process, the trainer's
                       command line, promtool, kubectl, DDP with gloo: `-m integration`
    tests/e2e          real Prometheus, Alertmanager, Grafana's queries, browsers, torchrun:
                       `-m e2e`, and every one of them is `slow` too

A test file directly under tests/ belongs to no layer and stops the run: put it in one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "e2e")


def layer_of(path: Path) -> str | None:
    """The layer of a test file under tests/: the first folder below it, when that is one of LAYERS."""
    parts = Path(path).resolve().relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.resolve().is_relative_to(TESTS)]
    outside = sorted({str(item.path.relative_to(TESTS.parent)) for item in ours if layer_of(item.path) is None})
    if outside:
        raise pytest.UsageError(f"tests outside tests/unit, tests/integration and tests/e2e: {', '.join(outside)}")
    for item in ours:
        layer = layer_of(item.path)
        item.add_marker(layer)
        if layer == "e2e":
            item.add_marker("slow")
