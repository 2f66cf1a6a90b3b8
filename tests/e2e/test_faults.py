"""Faults around the training process, with real processes: Prometheus or Alertmanager
going away, SIGTERM, kill -9 in the middle of a checkpoint save, a non-finite loss, and
an out_dir that is full or refuses new files. Training must go on, or stop cleanly,
and never lose its last good checkpoint or its metrics log. See docs/faults.md.

The server-side faults (bad HTTP input, slow clients, disconnects) are in
tests/integration/test_server_hardening.py; a metrics port in use is in tests/integration/test_server.py.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from exporter.metricslog import MetricsLog
from nanogpt.checkpoint import load_checkpoint
from tests.support.alerting import SCALE, Webhook, alertmanager_config, delivered
from tests.support.procs import (FAULTY_TRAINER, Alertmanager, Prometheus, Trainer, free_port, http_get, http_json,
                                 wait_until)
from tests.support.rules import write_scaled_rules

pytestmark = pytest.mark.slow

UNTIL_STOPPED = ["--max_iters=1000000", "--eval_iters=2"]
CKPT_TEMP = ".ckpt.pt.*.tmp"  # save_checkpoint's temp file, renamed over ckpt.pt when complete


@pytest.fixture
def started():
    """A list to put processes in; each is stopped (group and all) at the end, even on failure."""
    processes = []
    yield processes
    for process in reversed(processes):
        process.stop()


def alive(trainer: Trainer) -> Trainer:
    """The trainer, or the test fails at once if it exited (pytest.fail is not retried by wait_until)."""
    if not trainer.running():
        pytest.fail(f"the trainer exited with {trainer.proc.returncode}:\n{trainer.output()[-2000:]}")
    return trainer


def status(trainer: Trainer) -> dict:
    return http_json(f"{alive(trainer).base_url}/api/status")


def iteration_passes(trainer: Trainer, past: int, timeout: float = 30) -> int:
    """Wait until the trainer has completed an iteration after `past`; returns it."""
    return wait_until(lambda: (it := status(trainer)["iteration"]) > past and it, timeout=timeout,
                      what=f"an iteration after {past}")  # fmt: skip


def samples(url: str, name: str) -> list[float]:
    """The values of the samples named `name` (any labels) in the exposition at `url`."""
    text = http_get(f"{url}/metrics").decode()
    return [float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{.*}})? (\S+)$", text, re.MULTILINE)]


def sample(trainer: Trainer, name: str) -> float:
    """The value of the one sample named `name` (labels aside) on the trainer's /metrics."""
    values = samples(trainer.base_url, name)
    assert len(values) == 1, f"{len(values)} samples of {name}"
    return values[0]


def logged_iterations(out_dir: Path) -> list[int]:
    """Iterations of the points in the metrics log, in file order (every line must parse; the lines
    of samples, which carry a "sample" key, are not points)."""
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["iteration"] for line in lines if "sample" not in line]


def finite_weights(checkpoint: dict) -> bool:
    return all(torch.isfinite(t).all() for t in checkpoint["model"].values())


# --- Prometheus and Alertmanager ---------------------------------------------------------------


def test_training_goes_on_while_prometheus_is_down_and_scrapes_resume_after_its_restart(tmp_path, started):
    trainer = Trainer(tmp_path / "trainer", "--run-id=fault-prom", "--log_interval=10", "--eval_interval=1000000",
                      *UNTIL_STOPPED)  # fmt: skip
    started.append(trainer)
    prometheus = Prometheus(tmp_path / "prometheus", [trainer.target])
    started.append(prometheus)
    iteration = 'nanogpt_iteration{run_id="fault-prom"}'
    scraped_before = wait_until(lambda: prometheus.value(iteration), timeout=30, what="a first scrape")
    prometheus.stop()

    down_at = status(trainer)["iteration"]
    iteration_passes(trainer, down_at + 200)  # nobody scrapes, and training goes on
    assert trainer.running()

    # the same address and data dir: the old samples are kept, and new ones carry on from the trainer
    prometheus = Prometheus(tmp_path / "prometheus", [trainer.target], port=prometheus.port)
    started.append(prometheus)
    wait_until(lambda: prometheus.value(iteration) > down_at + 200, timeout=30, what="a scrape after the restart")
    samples = [float(v) for _, v in prometheus.query(f"{iteration}[10m]")[0]["values"]]
    assert min(samples) <= scraped_before and samples == sorted(samples)


def test_training_goes_on_while_alertmanager_is_down_and_the_alert_arrives_once_it_is_up(tmp_path, started):
    webhook = Webhook()
    try:
        trainer = Trainer(tmp_path / "trainer", "--run-id=fault-am", "--inject_nonfinite_at=50", "--log_interval=1",
                          "--eval_interval=1000000", *UNTIL_STOPPED, command=FAULTY_TRAINER)  # fmt: skip
        started.append(trainer)
        alertmanager_port = free_port()  # nothing listens there yet
        # resend every second (default 1m): Prometheus drops an alert it failed to deliver until the next resend
        prometheus = Prometheus(tmp_path / "prometheus", [trainer.target],
                                rule_files=write_scaled_rules(tmp_path / "rules", SCALE),
                                alertmanager=f"127.0.0.1:{alertmanager_port}",
                                extra_args=("--rules.alert.resend-delay=1s",))  # fmt: skip
        started.append(prometheus)
        wait_until(lambda: sum(samples(prometheus.url, "prometheus_notifications_errors_total")) > 0, timeout=60,
                   what="Prometheus failing to deliver NanoGPTLossNotFinite")  # fmt: skip
        iteration_passes(trainer, status(trainer)["iteration"] + 200)
        assert trainer.running()

        started.append(Alertmanager(tmp_path / "alertmanager", alertmanager_config(webhook.url), port=alertmanager_port))
        _, alert = delivered(webhook, "NanoGPTLossNotFinite", "fault-am", timeout=30)
        assert alert["labels"]["severity"] == "critical"
    finally:
        webhook.close()


# --- SIGTERM -------------------------------------------------------------------------------------


def test_sigterm_saves_a_final_checkpoint_ends_finished_and_exits_143(tmp_path, started):
    trainer = Trainer(tmp_path, "--run-id=fault-term", "--log_interval=7", "--eval_interval=50",
                      "--metrics-linger=600", *UNTIL_STOPPED)  # fmt: skip
    started.append(trainer)
    iteration_passes(trainer, 60)
    trainer.signal(signal.SIGTERM)

    # it lingers, so a scrape still sees how the run ended
    final = wait_until(lambda: (s := status(trainer))["state"] == "finished" and s, timeout=30, what="finished")
    assert final["reason"] == "terminated by SIGTERM"
    assert sample(trainer, 'nanogpt_training_state{rank="0",run_id="fault-term",state="finished"}') == 1
    assert sample(trainer, "nanogpt_iteration") == final["iteration"]
    assert logged_iterations(trainer.out_dir)[-1] == final["iteration"]  # the last iteration trained is logged
    checkpoint = load_checkpoint(trainer.out_dir / "ckpt.pt")
    assert checkpoint["iter_num"] == final["iteration"] + 1  # the next one to train, as nanoGPT counts

    trainer.signal(signal.SIGTERM)  # ends the linger
    assert trainer.wait(timeout=10) == 143

    resumed = Trainer(tmp_path, "--resume", f"--max_iters={final['iteration'] + 5}", "--log_interval=1",
                      "--eval_interval=50", "--eval_iters=2", wait_for_metrics=False)  # fmt: skip
    started.append(resumed)
    assert resumed.wait(timeout=60) == 0, resumed.output()[-2000:]
    assert re.findall(r"^iter (\d+):", resumed.output(), re.MULTILINE)[0] == str(final["iteration"] + 1)


def test_a_second_signal_during_the_final_save_leaves_a_whole_checkpoint(tmp_path, started):
    trainer = Trainer(tmp_path, "--run-id=fault-term2", "--log_interval=10", "--eval_interval=1000000",
                      "--slow_save_seconds=2", "--metrics-linger=600", *UNTIL_STOPPED,
                      command=FAULTY_TRAINER)  # fmt: skip
    started.append(trainer)
    iteration_passes(trainer, 20)
    trainer.signal(signal.SIGTERM)
    wait_until(lambda: list(trainer.out_dir.glob(CKPT_TEMP)), interval=0.02, what="the final save to start")
    trainer.signal(signal.SIGINT)  # Ctrl-C while the save is being written: ignored until it is done

    final = wait_until(lambda: (s := status(trainer))["state"] == "finished" and s, timeout=30, what="finished")
    assert final["last_checkpoint"]["iteration"] == final["iteration"] + 1
    assert load_checkpoint(trainer.out_dir / "ckpt.pt")["iter_num"] == final["iteration"] + 1
    assert not list(trainer.out_dir.glob(CKPT_TEMP))
    trainer.signal(signal.SIGTERM)
    assert trainer.wait(timeout=10) == 143  # the first signal decides the exit code


# --- kill -9 during a checkpoint save ------------------------------------------------------------


def test_kill_9_during_a_save_resumes_from_the_last_good_checkpoint_with_the_metrics_log_whole(tmp_path, started):
    trainer = Trainer(tmp_path, "--run-id=fault-kill", "--log_interval=1", "--eval_interval=20",
                      "--slow_save_seconds=2", *UNTIL_STOPPED, command=FAULTY_TRAINER)  # fmt: skip
    started.append(trainer)
    ckpt = trainer.out_dir / "ckpt.pt"
    first_saved = wait_until(lambda: trainer.find("^saved checkpoint") and ckpt.stat().st_mtime_ns, timeout=60,
                             what="the first save")  # fmt: skip

    def second_save_half_written():  # its temp file has data, or (were saves not atomic) ckpt.pt changed
        if len(re.findall("^saving checkpoint", alive(trainer).output(), re.MULTILINE)) < 2:
            return False
        return [p for p in trainer.out_dir.glob(CKPT_TEMP) if p.stat().st_size] or ckpt.stat().st_mtime_ns > first_saved

    wait_until(second_save_half_written, timeout=60, interval=0.02, what="the second save to be half written")
    trainer.signal(signal.SIGKILL)
    assert trainer.wait(timeout=10) == -signal.SIGKILL
    assert load_checkpoint(ckpt)["iter_num"] == 20
    assert list(trainer.out_dir.glob(CKPT_TEMP)), "the kill should land in the middle of the save"
    # a kill can also tear the log's last line (a write cut short); here it is torn for certain
    with open(trainer.out_dir / "metrics.jsonl", "a") as log:
        log.write('{"iteration":41,"loss":2.')

    resumed = Trainer(tmp_path, "--resume", "--max_iters=30", "--log_interval=1", "--eval_interval=20",
                      "--eval_iters=2", wait_for_metrics=False)  # fmt: skip
    started.append(resumed)
    assert resumed.wait(timeout=60) == 0, resumed.output()[-2000:]
    assert re.findall(r"^iter (\d+):", resumed.output(), re.MULTILINE)[0] == "20"
    # every point before the checkpoint kept, the torn line and the points after it dropped, then 20..30 anew
    assert logged_iterations(trainer.out_dir) == list(range(31))
    assert not list(trainer.out_dir.glob(CKPT_TEMP))  # the resumed run's first save removed the leftover


# --- a non-finite loss ---------------------------------------------------------------------------


def test_stop_on_nonfinite_counts_it_keeps_the_last_good_checkpoint_and_exits_1(tmp_path, started):
    trainer = Trainer(tmp_path, "--run-id=fault-nan", "--log_interval=1", "--eval_interval=10",
                      "--inject_nonfinite_at=25", "--stop_on_nonfinite", "--metrics-linger=600",
                      *UNTIL_STOPPED, command=FAULTY_TRAINER)  # fmt: skip
    started.append(trainer)
    final = wait_until(lambda: (s := status(trainer))["state"] == "failed" and s, timeout=60, what="failed")
    assert final["reason"] == "non-finite loss at iteration 25"
    assert sample(trainer, "nanogpt_loss_nonfinite_total") == 1
    checkpoint = load_checkpoint(trainer.out_dir / "ckpt.pt")
    assert checkpoint["iter_num"] == 20 and finite_weights(checkpoint)  # the last save before the NaN
    trainer.signal(signal.SIGTERM)  # ends the linger; the run's own verdict stays the exit code
    assert trainer.wait(timeout=10) == 1


# --- out_dir full or refusing new files at checkpoint time ---------------------------------------


def read_back_iterations(out_dir: Path) -> list[int]:
    """The iterations in the metrics log, in file order, as the exporter reads them back."""
    return [point.iteration for point in MetricsLog(out_dir / "metrics.jsonl").read()]


class DiskFull:
    """out_dir on a 4 MiB tmpfs mounted for the test; the fault fills it with a file."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(out_dir)],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
        self.out_dir, self.filler = out_dir, out_dir / "filler"

    def start(self) -> None:
        with open(self.filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e

    def end(self) -> None:
        self.filler.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.out_dir)], check=True)


class NoNewFiles:
    """out_dir made immutable (chattr +i): root ignores permissions, not this. Existing files stay
    writable (the metrics log goes on); the checkpoint's temp file cannot be created."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True)
        if shutil.which("chattr") is None:
            pytest.skip("chattr (e2fsprogs) is not installed")
        self.out_dir = out_dir

    def start(self) -> None:
        result = subprocess.run(["chattr", "+i", str(self.out_dir)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make {self.out_dir} immutable here: {result.stderr.strip()}")

    def end(self) -> None:
        subprocess.run(["chattr", "-i", str(self.out_dir)], check=True)

    close = end


@pytest.mark.parametrize("fault", [DiskFull, NoNewFiles], ids=["disk-full", "read-only"])
def test_a_checkpoint_that_cannot_be_written_is_an_error_line_and_training_goes_on(tmp_path, started, fault):
    out_dir = tmp_path / "out"
    disk = fault(out_dir)
    try:
        trainer = Trainer(tmp_path, "--run-id=fault-disk", "--log_interval=10", "--eval_interval=20",
                          *UNTIL_STOPPED, out_dir=out_dir)  # fmt: skip
        started.append(trainer)
        # a fast trainer saves every few ms: wait for any good checkpoint, not a given one
        wait_until(lambda: status(trainer)["last_checkpoint"], timeout=60, what="the first checkpoint")
        disk.start()
        # a save under way as the directory turned immutable leaves a temp file nobody may delete
        stuck = set(out_dir.glob(CKPT_TEMP)) if fault is NoNewFiles else set()
        wait_until(lambda: alive(trainer).find(r"^error: could not save checkpoint to .*ckpt\.pt \(.+\); the previous "
                                        r"one is kept, training goes on$"), what="the failed save")  # fmt: skip
        failed_at = status(trainer)["iteration"]
        good = status(trainer)["last_checkpoint"]["iteration"]  # the last save before the disk filled
        iteration_passes(trainer, failed_at + 50)
        if fault is DiskFull:  # run on until the metrics log, too, hits the full disk
            wait_until(lambda: samples(alive(trainer).base_url, "nanogpt_exporter_errors_total") > [0.0],
                       timeout=60, what="a metrics-log write failing on the full disk")  # fmt: skip
        assert load_checkpoint(out_dir / "ckpt.pt")["iter_num"] == good
        assert status(trainer)["last_checkpoint"]["iteration"] == good
        assert sample(trainer, "nanogpt_checkpoint_failures_total") >= 1
        assert status(trainer)["last_checkpoint_error"]["iteration"] > good
        assert not set(out_dir.glob(CKPT_TEMP)) - stuck
        assert "Traceback" not in trainer.output()

        disk.end()  # room again: the next save succeeds
        saved = wait_until(lambda: (it := status(trainer)["last_checkpoint"]["iteration"]) > failed_at and it,
                           what="a save after the fault")  # fmt: skip
        assert load_checkpoint(out_dir / "ckpt.pt")["iter_num"] >= saved
        # the metrics log lost nothing: lines it could not write went out once there was room
        expected = list(range(0, saved + 1, 10))
        wait_until(lambda: read_back_iterations(out_dir)[: len(expected)] == expected,
                   what=f"metrics.jsonl holding every logged iteration up to {saved}")  # fmt: skip
    finally:
        for process in reversed(started):
            process.stop()  # before unmounting: nothing may hold files there
        disk.close()
