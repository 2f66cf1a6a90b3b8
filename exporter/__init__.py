"""nanogpt-monitor's exporter: a training loop's figures recorded, and served by a monitor process.

    monitor = TrainingMonitor(run_id="r1", rank=0)          # records into a run directory
    server = monitor.serve(host="127.0.0.1", port=8000)    # the monitor process: /metrics, /api/status, ...
    monitor.run_started(max_iterations=5000, tokens_per_iteration=8192)
    monitor.iteration(iteration=1, tokens=8192)            # every step: a few shared-memory writes
    monitor.log(iteration=1, loss=4.2, lr=6e-4)            # at log intervals
    monitor.run_ended(iteration=5000, state="finished")
    monitor.close()                                        # stops the monitor process too

It never imports torch: it takes plain Python numbers the loop already has.
The training process opens no socket; `nanogpt-monitor serve --dir DIR`
serves every rank recording into DIR.
"""

from .history import History
from .launch import MonitorProcess, PortInUseError, ServeError
from .metricslog import MetricsLog
from .monitor import TrainingMonitor
from .point import Point
from .webconfig import WebConfig, WebConfigError, load_web_config

__all__ = ["TrainingMonitor", "MonitorProcess", "PortInUseError", "ServeError", "History", "MetricsLog", "Point",
           "WebConfig", "WebConfigError", "load_web_config"]
