"""The torch side of the seam: what any PyTorch training hands the exporter.

`exporter/` never imports torch; this package may. `MonitoredRun` (run.py) is the one adapter
from a training loop to the exporter; the Hugging Face and Lightning callbacks map their
framework's hooks onto it, each importing its framework lazily so that none is required.
"""

from .run import MonitoredRun

__all__ = ["MonitoredRun"]
