"""End to end: the real trainer only records, and the node's monitor process serves, outlives a
killed trainer by its linger only, and comes back once when it is killed itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.procs import Trainer, http_get, http_json, wait_until

pytestmark = pytest.mark.slow

RUN = ["--max_iters=1000000", "--log_interval=5", "--eval_interval=1000000"]  # runs until stopped


def listening_inodes() -> set[str]:
    """Socket inodes of every listening TCP socket on this machine (state 0A in /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def monitor_pid(trainer_pid: int) -> int:
    """The pid of the monitor process a trainer started (`exporter serve ... --owner PID`)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"exporter" in args and b"serve" in args and b"--owner" in args \
                and args[args.index(b"--owner") + 1] == str(trainer_pid).encode():
            return int(proc.name)
    raise AssertionError(f"no monitor process with --owner {trainer_pid}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def iteration(trainer: Trainer) -> int:
    return http_json(trainer.base_url + "/api/status")["iteration"]


@pytest.fixture
def trainer(tmp_path):
    started = []

    def start(*args: str) -> Trainer:
        process = Trainer(tmp_path / f"trainer{len(started)}", *args)
        started.append(process)
        wait_until(lambda: iteration(process) >= 5, timeout=60, what="training to start")
        return process

    yield start
    for process in started:
        process.stop()


def test_the_training_process_has_no_listening_socket_and_no_server_thread(trainer):
    process = trainer("--run-id=e2e-quiet", *RUN)
    pid = process.proc.pid
    assert not socket_inodes(pid) & listening_inodes()
    threads = {Path(task, "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()}
    assert not [name for name in threads if "metrics" in name or "http" in name.lower()]
    # the monitor process is the one listening on the printed port
    assert socket_inodes(monitor_pid(pid)) & listening_inodes()


def test_a_trainer_killed_with_kill_9_is_marked_failed_within_5_s_and_its_monitor_then_exits(trainer):
    process = trainer("--run-id=e2e-kill9", "--metrics-linger=4", *RUN)
    url, pid = process.base_url, process.proc.pid
    monitor = monitor_pid(pid)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: http_json(url + "/api/status")["state"] == "failed", timeout=5, what="state failed")
    status = http_json(url + "/api/status")
    assert "ended without reporting an end" in status["reason"]
    scrape = http_get(url + "/metrics").decode()
    assert 'nanogpt_training_state{rank="0",run_id="e2e-kill9",state="failed"} 1.0' in scrape
    assert 'nanogpt_training_state{rank="0",run_id="e2e-kill9",state="running"} 0.0' in scrape
    assert f"nanogpt_iteration{{rank=\"0\",run_id=\"e2e-kill9\"}} {status['iteration']}.0" in scrape
    wait_until(lambda: not alive(monitor), timeout=20, what="the monitor to exit after its linger")
    assert time.monotonic() - killed >= 4  # it served the last figures for the linger first


def test_a_killed_monitor_is_restarted_once_and_training_goes_on(trainer):
    process = trainer("--run-id=e2e-monitor-kill", *RUN)
    url, pid = process.base_url, process.proc.pid
    first = monitor_pid(pid)
    before = iteration(process)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: process.find(r"monitor process \(pid \d+\) exited \(signal SIGKILL\); restarted it"),
               timeout=60, what="the one-line restart warning")
    assert process.running()
    wait_until(lambda: iteration(process) > before + 5, timeout=60, what="training to go on, served again")
    second = monitor_pid(pid)
    assert second != first and process.base_url == url  # the same port
    os.kill(second, signal.SIGKILL)  # a second death: reported, not restarted
    wait_until(lambda: process.find(r"exited again \(signal SIGKILL\); not restarting it"), timeout=60,
               what="the second warning")
    assert process.running()


def test_the_run_directory_is_gone_once_the_trainer_and_its_monitor_exit(trainer):
    process = trainer("--run-id=e2e-tidy", *RUN)
    monitor = monitor_pid(process.proc.pid)
    args = Path(f"/proc/{monitor}/cmdline").read_bytes().split(b"\0")
    directory = Path(args[args.index(b"--dir") + 1].decode())
    assert (directory / "rank0.jsonl").is_file()
    process.signal(signal.SIGTERM)  # a clean stop: final checkpoint, then the trainer closes its monitor
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    wait_until(lambda: not alive(monitor), timeout=10, what="the monitor to exit")
    assert not directory.exists()
