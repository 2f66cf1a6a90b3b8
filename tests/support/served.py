"""The monitor process as the server's tests see it, and what they measure of it from outside.

`served(directory)` is a TrainingMonitor recording into a test's own directory with its monitor
process serving it on an ephemeral loopback port; `MonitorCli` runs `python -m exporter serve`
itself, for the options only the command line has (short idle and stream keepalive timeouts).
The rest reads /proc: a process's open descriptors and threads, and which TCP sockets listen.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exporter import TrainingMonitor
from exporter.cli import READY_FILE
from tests.support.procs import REPO, wait_until

MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
TREE = {"name": "", "type": "GPT", "kind": "model", "parameters": 1000, "children": [
    {"name": "transformer.h.0.attn", "type": "CausalSelfAttention", "kind": "attention", "heads": 2,
     "head_size": 16, "parameters": 1000}]}


def recording(directory: Path) -> TrainingMonitor:
    """A rank-0 monitor of run r1 recording into `directory`, its run started with MODEL and TREE; not served."""
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=directory)
    monitor.run_started(max_iterations=100, tokens_per_iteration=256, model_config=MODEL,
                        parameters={"total": 1000}, start_time=time.time(), model_tree=TREE)
    return monitor


def started(directory: Path, run_id: str = "r1", points: int = 0, **serve) -> TrainingMonitor:
    """A rank-0 monitor recording into `directory`, run started and `points` points logged, served."""
    monitor = TrainingMonitor(run_id=run_id, rank=0, directory=directory)
    monitor.run_started(max_iterations=1000, tokens_per_iteration=256, model_config=MODEL,
                        parameters={"total": 1000}, start_time=time.time())
    log_points(monitor, 1, points)
    monitor.serve(host="127.0.0.1", port=0, **serve)
    return monitor


def log_points(monitor: TrainingMonitor, first: int, last: int) -> None:
    for i in range(first, last + 1):
        monitor.iteration(iteration=i, tokens=256)
        monitor.log(iteration=i, loss=4.0 - 0.001 * i, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0)


def sample(url: str, name: str, labels: str = 'rank="0",run_id="r1"') -> float | None:
    """One sample's value from a /metrics answer (None when the series is absent)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def exporter_errors(url: str, run_id: str = "r1") -> float | None:
    """nanogpt_exporter_errors_total of rank 0: the trainer's own count plus the monitor's."""
    return sample(url, "nanogpt_exporter_errors_total", f'rank="0",run_id="{run_id}"')


class MonitorCli:
    """`python -m exporter serve --dir DIR --port 0 ARGS...` owned by this test process; `.close()` stops it."""

    def __init__(self, directory: Path, *args: str):
        self.directory = Path(directory)
        (self.directory / READY_FILE).unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "serve", "--dir", str(directory), "--port", "0",
             "--owner", str(os.getpid()), *args], cwd=REPO, stdin=subprocess.DEVNULL)
        ready = wait_until(self._ready, timeout=30, what="the monitor process to listen")
        self.url, self.port, self.pid = ready["url"], int(ready["port"]), self.process.pid

    def _ready(self):
        if self.process.poll() is not None:
            raise AssertionError(f"the monitor exited with code {self.process.returncode}")
        try:
            content = json.loads((self.directory / READY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return content if content.get("pid") == self.process.pid else None

    def __enter__(self) -> "MonitorCli":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- /proc ------------------------------------------------------------------------------------

def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kb(pid: int | str = "self") -> int:
    return int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE).group(1))


def socket_inodes(pid: int | str = "self") -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_ports(pid: int | str = "self") -> set[int]:
    """The TCP ports (IPv4 and IPv6) process `pid` listens on, from /proc/net/tcp{,6}."""
    mine, ports = socket_inodes(pid), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in mine:  # 0A: TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def established(pid: int | str) -> int:
    """How many TCP connections process `pid` holds open (every state but LISTEN)."""
    mine, count = socket_inodes(pid), 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[3] != "0A" and int(fields[9]) in mine
    return count


def allow_open_files(count: int) -> None:
    """Raise this process's descriptor limit to `count` (the monitor it starts inherits it); skip
    where the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= count:
        return
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"this test needs {count} open files; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))
