"""The command line as a user meets it: nanoGPT's log lines, one-line errors with exit code 2, sampling."""

import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.support.procs import REPO, http_get, http_json, wait_until
from tests.support.trainer import run_cli, tiny_flags

LOG_LINE = r"iter (\d+): loss (\d+\.\d+), time \d+\.\d+ms, tok/s \d+, mfu (n/a|\d+\.\d+%), eta \d\d:\d\d:\d\d"


def test_python_m_nanogpt_trains_and_logs_nanogpts_lines(tmp_path):
    run = run_cli(*tiny_flags(tmp_path, max_iters=10, log_interval=5, eval_interval=10))
    assert run.returncode == 0, run.stderr
    assert [m.group(1) for m in re.finditer(LOG_LINE, run.stdout)] == ["0", "5", "10"]
    assert re.search(r"^step 10: train loss \d+\.\d+, val loss \d+\.\d+", run.stdout, re.MULTILINE)
    assert re.search(r"^run_id: \d{8}-\d{6}-[0-9a-f]{6}$", run.stdout, re.MULTILINE)
    assert (tmp_path / "out" / "ckpt.pt").is_file()


@pytest.mark.parametrize("peak_flops, mfus", [(None, ["n/a", "n/a", "n/a"]), (1e12, ["n/a", "%", "%"])])
def test_mfu_on_a_cpu_is_no_figure_unless_peak_flops_is_given(tmp_path, peak_flops, mfus):
    more = [] if peak_flops is None else [f"--peak_flops={peak_flops}"]
    run = run_cli(*tiny_flags(tmp_path, max_iters=10, log_interval=5, eval_interval=10), *more)
    assert run.returncode == 0, run.stderr
    logged = [m.group(3) for m in re.finditer(LOG_LINE, run.stdout)]
    assert ["%" if m.endswith("%") else m for m in logged] == mfus  # iteration 0 is warm-up


def test_a_run_stopped_on_a_nonfinite_loss_exits_1(tmp_path):
    run = run_cli(*tiny_flags(tmp_path, max_iters=20, stop_on_nonfinite=True), "--inject_nonfinite_at=3",
                  module="tests.support.faulty_train")
    assert run.returncode == 1
    assert "stopping: non-finite loss at iteration 5" in run.stdout


def bad_data(tmp_path, content: bytes) -> str:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    return f"--data-file={path}"


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p: ["--n_layers=2"], "unrecognized arguments: --n_layers=2"),
        (lambda p: ["--batch_size=big"], "invalid int value: 'big'"),
        (lambda p: ["--preset=gpt9"], "unknown preset 'gpt9'"),
        (lambda p: ["--n_embd=32", "--n_head=3"], "n_embd=32 must be divisible by n_head=3"),
        (lambda p: [f"--data-file={p / 'missing.txt'}"], "missing.txt' does not exist"),
        (lambda p: [bad_data(p, b"")], "bad.txt' is empty"),
        (lambda p: [bad_data(p, b"caf\xe9 " * 50)], "bad.txt' is not UTF-8 text"),
        (lambda p: [bad_data(p, b"abc" * 20)], "too short for block_size=32"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(tmp_path, make_args, message):
    run = run_cli(*tiny_flags(tmp_path), *make_args(tmp_path))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and message in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_an_unknown_key_in_a_config_file_is_one_error_line(tmp_path):
    (tmp_path / "c.toml").write_text("n_layer = 2\nlearning_rte = 0.1\n")
    run = run_cli(*tiny_flags(tmp_path), f"--config={tmp_path / 'c.toml'}")
    assert (run.returncode, run.stderr) == (2, f"error: unknown config key 'learning_rte' (in {tmp_path / 'c.toml'})\n")


def test_resuming_from_a_corrupt_checkpoint_is_one_error_line(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ckpt.pt").write_bytes(b"\x00" * 64)
    run = run_cli(*tiny_flags(tmp_path), "--resume")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "ckpt.pt' is corrupt or unreadable" in run.stderr


def test_resuming_with_another_model_shape_is_one_error_line(tmp_path):
    assert run_cli(*tiny_flags(tmp_path, max_iters=10, eval_interval=10)).returncode == 0
    run = run_cli(*tiny_flags(tmp_path, n_embd=64), "--resume")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "has n_embd=32 but this run has n_embd=64" in run.stderr


def test_nanogpt_sample_generates_reproducibly_from_a_checkpoint(tmp_path):
    assert run_cli(*tiny_flags(tmp_path, max_iters=10, eval_interval=10)).returncode == 0
    args = [f"--out_dir={tmp_path / 'out'}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=30",
            "--temperature=0.9", "--top_k=20", "--seed=3"]  # fmt: skip
    first, again = run_cli(*args, module="nanogpt.sample"), run_cli(*args, module="nanogpt.sample")
    assert first.returncode == 0, first.stderr
    samples = first.stdout.split("---------------\n")[:2]
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 30 + 1 for s in samples)
    assert first.stdout == again.stdout


def test_nanogpt_sample_without_a_checkpoint_is_one_error_line(tmp_path):
    run = run_cli(f"--out_dir={tmp_path}", module="nanogpt.sample")
    assert run.returncode == 2 and run.stderr == f"error: no checkpoint at '{tmp_path / 'ckpt.pt'}'\n"



def run_on_a_terminal(*args: str, module: str = "nanogpt"):
    """`python -m <module> args...` with stdin, stdout and stderr on a pseudo-terminal:
    (process, shown) where shown() is everything the terminal got so far."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", module, *args], stdin=follower, stdout=follower,
                               stderr=follower, cwd=REPO, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    os.close(follower)
    received = bytearray()

    def pump():
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the process and its terminal are gone
                break
            if not chunk:
                break
            received.extend(chunk)
        os.close(leader)

    threading.Thread(target=pump, daemon=True).start()
    return process, lambda: received.decode("utf-8", "replace")


LINGER_LINE = r"run finished; page stays at (http://[\d.]+:(\d+))/ until Ctrl-C"


def lingering(process, shown) -> tuple[str, int]:
    """(page URL, port) once the run on a terminal says it keeps its page."""
    def said():
        assert process.poll() is None or re.search(LINGER_LINE, shown()), f"exited early:\n{shown()[-3000:]}"
        return re.search(LINGER_LINE, shown())
    line = wait_until(said, timeout=120, what="the linger line")
    return line.group(1), int(line.group(2))


def assert_closed(port: int) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def kill(process) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def test_a_run_started_from_a_terminal_keeps_its_page_until_ctrl_c(tmp_path):
    process, shown = run_on_a_terminal(*tiny_flags(tmp_path, max_iters=10, no_metrics=False, metrics_port=0))
    try:
        url, port = lingering(process, shown)
        assert f"metrics: {url}/metrics" in shown()
        assert process.poll() is None  # still serving, by itself
        assert http_json(url + "/api/status")["state"] == "finished"
        assert b'data-state="finished"' in http_get(url + "/")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0  # the run's own exit code: it finished
        assert_closed(port)
    finally:
        kill(process)


def test_sigterm_ends_a_failed_runs_page_on_a_terminal_with_the_runs_exit_code(tmp_path):
    flags = tiny_flags(tmp_path, max_iters=20, no_metrics=False, metrics_port=0, stop_on_nonfinite=True)
    process, shown = run_on_a_terminal(*flags, "--inject_nonfinite_at=3", module="tests.support.faulty_train")
    try:
        url, port = lingering(process, shown)
        assert http_json(url + "/api/status")["state"] == "failed"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1  # failed, as without the linger
        assert_closed(port)
    finally:
        kill(process)


def test_off_a_terminal_a_run_exits_after_training_as_before(tmp_path):
    run = run_cli(*tiny_flags(tmp_path, max_iters=5, no_metrics=False, metrics_port=0))
    assert run.returncode == 0, run.stderr
    assert "metrics: http://" in run.stdout
    assert "page stays" not in run.stdout and "serving metrics for" not in run.stdout


def test_an_explicit_zero_linger_exits_at_once_even_on_a_terminal(tmp_path):
    flags = tiny_flags(tmp_path, max_iters=5, no_metrics=False, metrics_port=0, metrics_linger=0)
    process, shown = run_on_a_terminal(*flags)
    try:
        assert process.wait(timeout=120) == 0
        wait_until(lambda: "params sha256" in shown(), timeout=10, what="the summary line")  # all read
        assert "metrics: http://" in shown() and "page stays" not in shown()
    finally:
        kill(process)


def test_ctrl_c_during_training_on_a_terminal_stops_and_exits_without_keeping_the_page(tmp_path):
    flags = tiny_flags(tmp_path, max_iters=100000, no_metrics=False, metrics_port=0)
    process, shown = run_on_a_terminal(*flags)
    try:
        wait_until(lambda: re.search(r"^iter 5: ", shown(), re.MULTILINE), timeout=120, what="iteration 5")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130  # stopped by Ctrl-C, as before
        wait_until(lambda: "params sha256" in shown(), timeout=10, what="the summary line")
        assert "page stays" not in shown()
    finally:
        kill(process)
