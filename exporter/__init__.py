"""nanogpt-monitor's exporter: Prometheus metrics, history and a live HTTP API for a training loop.

    monitor = TrainingMonitor(run_id="r1", rank=0)
    server = monitor.serve(host="127.0.0.1", port=8000)    # GET /metrics, /api/status, ...
    monitor.run_started(max_iterations=5000, tokens_per_iteration=8192)
    monitor.iteration(iteration=1, tokens=8192)            # every step
    monitor.log(iteration=1, loss=4.2, lr=6e-4)            # at log intervals
    monitor.run_ended(iteration=5000, state="finished")
    server.close()

It never imports torch: it takes plain Python numbers the loop already has.
"""

from .history import History
from .point import Point
from .metricslog import MetricsLog
from .monitor import TrainingMonitor
from .server import MetricsServer, PortInUseError, ServeError
from .webconfig import WebConfig, WebConfigError, load_web_config

__all__ = ["TrainingMonitor", "MetricsServer", "PortInUseError", "ServeError", "History", "MetricsLog", "Point",
           "WebConfig", "WebConfigError", "load_web_config"]
