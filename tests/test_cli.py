"""The command line as a user meets it: nanoGPT's log lines, one-line errors with exit code 2, sampling."""

import re

import pytest

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
