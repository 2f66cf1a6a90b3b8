"""Starting the monitor process from a training process, and stopping it.

`MonitorProcess` runs `python -m exporter serve --dir DIR` beside the trainer, waits until it
listens (its DIR/monitor.json) and raises ServeError with its one-line reason when it cannot (a
port in use). At a log point the trainer calls `check()`: a monitor that died is started again
once, on the same port, with a one-line warning; training never waits for it. `close()` stops it;
when the trainer made DIR the monitor removes it on the way out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .cli import READY_FILE

log = logging.getLogger(__name__)

STARTUP_SECONDS = 30.0  # a cold interpreter importing aiohttp takes ~0.5 s; a loaded CI machine more


class ServeError(OSError):
    """The monitor could not start; the message is one sentence."""


class PortInUseError(ServeError):
    """The host:port to serve on is taken by another process."""


class MonitorProcess:
    """The monitor process serving `directory` on host:port (0 = any free port), started now."""

    def __init__(self, directory: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                 web_config: Optional[str | os.PathLike] = None, linger: float = math.inf,
                 remove_dir: bool = False):
        """`web_config`: a web config file's path (basic auth, TLS); `linger`: seconds the monitor
        keeps serving if this process dies (kill -9) before closing it; `remove_dir`: the monitor
        deletes `directory` when it exits."""
        self.directory, self.host = Path(directory), host
        self.web_config, self.linger, self.remove_dir = web_config, linger, remove_dir
        self.restarts = 0
        self._closed = False
        self.url = self._start(int(port))
        self.port = int(self.url.rsplit(":", 1)[1])

    def _command(self, port: int) -> list[str]:
        command = [sys.executable, "-m", "exporter", "serve", "--dir", str(self.directory), "--host", self.host,
                   "--port", str(port), "--linger", str(self.linger), "--owner", str(os.getpid())]
        if self.web_config is not None:
            command += ["--web-config", str(self.web_config)]
        if self.remove_dir:
            command.append("--remove-dir")
        return command

    def _start(self, port: int) -> str:
        ready = self.directory / READY_FILE
        self.directory.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        package_root = str(Path(__file__).resolve().parents[1])  # importable without an install, too
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                                          os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(self._command(port), env=env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)  # a Ctrl-C in the terminal is the trainer's to handle
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            content = _read_ready(ready)
            if content is not None and "error" in content:
                self.process.wait()
                error = PortInUseError if "already in use" in content["error"] else ServeError
                raise error(content["error"])
            if content is not None and content.get("pid") == self.process.pid:
                return str(content["url"])
            if self.process.poll() is not None:
                raise ServeError(f"the monitor process exited with code {self.process.returncode} before serving")
            time.sleep(0.01)
        self.process.kill()
        raise ServeError(f"the monitor process did not start serving within {STARTUP_SECONDS:.0f} s")

    @property
    def pid(self) -> int:
        return self.process.pid

    def check(self) -> None:
        """Start the monitor again, once, if it died; a second death is only reported. Never raises."""
        if self._closed or self.process.poll() is None:
            return
        code = self.process.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if self.restarts >= 1:
            if self.restarts == 1:
                log.warning("monitor: the monitor process exited again (%s); not restarting it", how)
                self.restarts += 1
            return
        self.restarts, dead = self.restarts + 1, self.process.pid
        try:
            self.url = self._start(self.port)
            log.warning("monitor: the monitor process (pid %d) exited (%s); restarted it at %s", dead, how, self.url)
        except ServeError as e:
            log.warning("monitor: the monitor process exited (%s) and could not be restarted: %s", how, e)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the monitor (SIGTERM, then SIGKILL after `timeout` s) and wait for it; remove the
        directory it was to remove, should it have died without doing so (killed, not restarted)."""
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.remove_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "MonitorProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_ready(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
