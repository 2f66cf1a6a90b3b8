"""The installed nanogpt-monitor's version, for nanogpt_run_info (its one source: nanogpt/__init__.py,
read by setuptools through pyproject.toml)."""

from __future__ import annotations

import importlib.metadata


def _installed_version() -> str:
    """The installed nanogpt-monitor's version (its one source: nanogpt/__init__.py, via pyproject.toml)."""
    try:
        return importlib.metadata.version("nanogpt-monitor")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


VERSION = _installed_version()
