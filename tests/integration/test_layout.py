"""The codebase's shape where running it is the proof (what the source says: tests/unit/test_layout.py)."""

import subprocess
import sys

from tests.support.procs import REPO


def test_python_m_nanogpt_train_trains_nothing_and_names_the_entry_point():
    result = subprocess.run([sys.executable, "-m", "nanogpt.train", "--max_iters=1"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: run `python -m nanogpt` or `nanogpt-train`"
