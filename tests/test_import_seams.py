"""Which side of the seam imports what, checked in a fresh interpreter (nothing preloaded).

The exporter never imports torch or a training framework; the torch-side package
and its adapters import their framework only when an adapter is looked up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.procs import REPO

FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "accelerate")


def loaded_after(code: str) -> set[str]:
    """The FRAMEWORKS a fresh Python has in sys.modules after running `code` in this checkout."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_every_exporter_module_imports_without_torch_or_a_framework():
    code = ("import pkgutil, importlib, exporter\n"
            "for m in pkgutil.iter_modules(exporter.__path__): importlib.import_module('exporter.' + m.name)")
    assert loaded_after(code) == set()


def test_the_torch_side_package_and_its_adapters_import_no_framework_until_used():
    code = "import nanogpt_monitor, nanogpt_monitor.model_view, nanogpt_monitor.run, nanogpt_monitor.hf, " \
           "nanogpt_monitor.lightning"
    assert loaded_after(code) == set()

