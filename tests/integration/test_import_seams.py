"""Which side of the seam imports what, checked in a fresh interpreter (nothing preloaded).

The exporter never imports torch or a training framework; the torch-side package
and its adapters import their framework only when an adapter is looked up; the
training process, which only records, never imports the monitor process's HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.procs import REPO

FRAMEWORKS = ("torch", "transformers", "lightning", "pytorch_lightning", "accelerate")


def loaded_after(code: str, modules: tuple[str, ...] = FRAMEWORKS) -> set[str]:
    """The `modules` a fresh Python has in sys.modules after running `code` in this checkout."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_every_exporter_module_imports_without_torch_or_a_framework():
    code = ("import pkgutil, importlib, exporter\n"
            "for m in pkgutil.iter_modules(exporter.__path__):\n"
            "    if m.name != '__main__': importlib.import_module('exporter.' + m.name)")  # that one runs the CLI
    assert loaded_after(code) == set()


def test_the_torch_side_package_and_its_adapters_import_no_framework_until_used():
    code = "import nanogpt_monitor, nanogpt_monitor.model_view, nanogpt_monitor.run, nanogpt_monitor.hf, " \
           "nanogpt_monitor.lightning"
    assert loaded_after(code) == set()



def test_recording_imports_no_http_server(tmp_path):
    code = ("from exporter import TrainingMonitor\n"
            f"monitor = TrainingMonitor(run_id='r', rank=0, directory={str(tmp_path)!r})\n"
            "monitor.run_started(max_iterations=10)\n"
            "monitor.iteration(iteration=1, tokens=8)\n"
            "monitor.log(iteration=1, loss=2.0)\n"
            "monitor.run_ended(iteration=1)\n"
            "monitor.close()")
    assert loaded_after(code, ("aiohttp",)) == set()  # (prometheus_client itself imports http.server)
