"""exporter.metrics' exposition as promtool reads it (what each series is: tests/unit/test_metrics.py)."""

import subprocess

from exporter import TrainingMonitor
from tests.support.procs import require
from tests.support.recorded import read_back


def test_promtool_accepts_the_exposition(tmp_path):
    promtool = require("promtool")
    recorded = read_back(TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run"))  # before any event
    result = subprocess.run([promtool, "check", "metrics"], input=recorded.exposition().encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
