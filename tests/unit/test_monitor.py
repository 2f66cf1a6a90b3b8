"""exporter.TrainingMonitor: events in, recorded figures out (read back as the monitor process reads
them: tests/support/recorded.py), and never an exception."""

import csv
import io
import logging
import math
import os
import threading

import pytest

import nanogpt
from exporter import TrainingMonitor
from exporter.trend import loss_trend
from tests.support.recorded import read_back

MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
LABELS = {"run_id": "r1", "rank": "0"}


def value(monitor, name, **labels):
    return read_back(monitor).value(name, **{**LABELS, **labels})


def view(monitor):
    return read_back(monitor).view(monitor.rank)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


@pytest.fixture
def started(run_dir):
    """Makes a monitor recording into the test's run directory, after run_started."""

    def start(metrics_log=None, start_iteration=0, **kwargs):
        monitor = TrainingMonitor(run_id="r1", rank=0, directory=run_dir, metrics_log=metrics_log)
        monitor.run_started(max_iterations=100, start_iteration=start_iteration, tokens_per_iteration=256,
                            model_config=MODEL, parameters={"total": 1234, "mlp": 600}, dataset="shakespeare",
                            device="cpu", dtype="float32", start_time=1000.0, **kwargs)
        return monitor

    return start


def log(monitor, i, loss, t=None):
    monitor.log(iteration=i, loss=loss, lr=1e-3, step_seconds=0.01, tokens_per_second=25600.0,
                elapsed_seconds=float(i), timestamp=1000.0 + i if t is None else t)


def test_run_started_sets_the_run_shape_model_and_state(started):
    monitor = started()
    assert value(monitor, "nanogpt_max_iterations") == 100
    assert value(monitor, "nanogpt_training_start_time_seconds") == 1000.0
    assert value(monitor, "nanogpt_model_parameters", component="total") == 1234
    assert value(monitor, "nanogpt_model_config", field="n_embd") == 32
    assert value(monitor, "nanogpt_training_state", state="running") == 1
    assert value(monitor, "nanogpt_run_info", dataset="shakespeare", device="cpu", dtype="float32",
                 world_size="1", node="0", version=nanogpt.__version__) == 1


def test_an_mfu_that_is_no_figure_is_nan_in_metrics_and_none_in_the_status(started):
    monitor = started()
    log(monitor, 0, 2.0)  # the loop passes mfu=None where the device's peak is not known
    assert math.isnan(value(monitor, "nanogpt_mfu_ratio"))
    assert view(monitor).status()["mfu"] is None


def test_iterations_count_tokens_and_time_steps(started):
    monitor = started()
    for i in range(1, 4):
        monitor.iteration(iteration=i, tokens=256, timestamp=1000.0 + 0.5 * i)
    assert value(monitor, "nanogpt_iteration") == 3
    assert value(monitor, "nanogpt_iterations_total") == 3
    assert value(monitor, "nanogpt_tokens_total") == 768
    assert value(monitor, "nanogpt_last_iteration_timestamp_seconds") == 1001.5
    assert value(monitor, "nanogpt_iteration_duration_seconds_count") == 2  # between consecutive steps
    assert value(monitor, "nanogpt_iteration_duration_seconds_sum") == pytest.approx(1.0)


def test_log_sets_loss_figures_and_the_summary_counts_only_finite_losses(started):
    monitor = started()
    for i, loss in enumerate([4.0, 3.0, math.nan, math.inf, 2.0]):
        log(monitor, i, loss)
    assert value(monitor, "nanogpt_logged_loss_count") == 3
    assert value(monitor, "nanogpt_logged_loss_sum") == 9.0
    assert value(monitor, "nanogpt_loss_nonfinite_total") == 2
    assert value(monitor, "nanogpt_train_loss") == 2.0
    assert value(monitor, "nanogpt_learning_rate") == 1e-3


def tensorboard_smoothed(losses, weight=0.9):
    """TensorBoard's scalar smoothing (debiased EMA) of the finite values: the reference."""
    last, n = 0.0, 0
    for x in (v for v in losses if math.isfinite(v)):
        last, n = weight * last + (1 - weight) * x, n + 1
    return last / (1 - weight ** n)


def test_the_ema_is_debiased_like_tensorboard_smoothing(started):
    monitor = started()
    losses = [4.0, 3.0, 2.5, math.nan, 2.0]
    for i, loss in enumerate(losses):
        log(monitor, i, loss)
    assert value(monitor, "nanogpt_train_loss_ema") == pytest.approx(tensorboard_smoothed(losses))
    assert view(monitor).history.last().loss_ema == pytest.approx(tensorboard_smoothed(losses))


def test_the_first_ema_equals_the_first_loss(started):
    monitor = started()
    log(monitor, 0, 4.2)
    assert value(monitor, "nanogpt_train_loss_ema") == pytest.approx(4.2)


def test_an_eval_before_the_log_point_of_its_iteration_joins_that_point(started):
    monitor = started()
    monitor.evaluated(iteration=10, train_loss=2.5, val_loss=2.7, best_val_loss=2.7, eval_seconds=0.5)
    log(monitor, 10, 2.6)
    log(monitor, 11, 2.5)
    points = view(monitor).history.since(None)
    assert (points[0].eval_train_loss, points[0].val_loss) == (2.5, 2.7)
    assert points[1].val_loss is None
    assert value(monitor, "nanogpt_eval_loss", split="val") == 2.7
    assert value(monitor, "nanogpt_eval_duration_seconds") == 0.5


def test_an_eval_after_the_log_point_amends_it_in_memory_and_on_disk(started, tmp_path):
    monitor = started(metrics_log=tmp_path / "m.jsonl")
    log(monitor, 10, 2.6)
    monitor.evaluated(iteration=10, train_loss=2.5, val_loss=2.7)
    assert view(monitor).history.last().val_loss == 2.7
    assert [p.val_loss for p in monitor.metrics_log.read()] == [2.7]


def test_run_ended_sets_the_final_state_and_stops_the_eta(started):
    monitor = started()
    log(monitor, 1, 3.0)
    monitor.run_ended(iteration=1, state="finished")
    assert value(monitor, "nanogpt_training_state", state="finished") == 1
    assert value(monitor, "nanogpt_training_state", state="running") == 0
    assert view(monitor).status()["eta_seconds"] is None


def test_a_failed_checkpoint_save_is_counted_and_the_last_good_one_stays_in_the_status(started):
    monitor = started()
    monitor.checkpoint_saved(iteration=20, path="out/ckpt.pt", seconds=0.1, timestamp=1020.0)
    monitor.checkpoint_failed(iteration=40, path="out/ckpt.pt", error="[Errno 28] No space left on device",
                              timestamp=1040.0)
    assert value(monitor, "nanogpt_checkpoint_failures_total") == 1
    assert value(monitor, "nanogpt_last_checkpoint_timestamp_seconds") == 1020.0
    status = view(monitor).status()
    assert status["last_checkpoint"]["iteration"] == 20
    assert status["last_checkpoint_error"] == {"iteration": 40, "path": "out/ckpt.pt",
                                               "error": "[Errno 28] No space left on device", "timestamp": 1040.0}


@pytest.mark.parametrize("call", [
    lambda m: m.iteration(iteration=1, tokens=-5, timestamp=1.0),  # a counter cannot go down
    lambda m: m.log(iteration=1, loss="not a number"),
    lambda m: m.evaluated(iteration=1, train_loss="bad", val_loss=1.0),
    lambda m: m.run_ended(iteration=1, state="exploded"),
    lambda m: m.log(iteration=1, loss=1.0, unexpected_field=3),  # events.py grew a field
])
def test_an_exception_inside_the_exporter_is_counted_not_raised(started, call):
    monitor = started()
    assert call(monitor) is None
    assert value(monitor, "nanogpt_exporter_errors_total") == 1


def test_a_repeated_error_is_logged_once_and_counted_each_time(started, caplog):
    monitor = started()
    with caplog.at_level(logging.WARNING, logger="exporter.monitor"):
        for _ in range(5):
            monitor.log(iteration=1, loss="bad")
    assert value(monitor, "nanogpt_exporter_errors_total") == 5
    assert len([r for r in caplog.records if "log failed" in r.getMessage()]) == 1


def test_events_for_another_run_are_reported(started):
    monitor = started(run_id="someone-else", rank=0)
    assert value(monitor, "nanogpt_exporter_errors_total") == 1
    assert value(monitor, "nanogpt_training_state", state="running") == 1  # the rest still applied


def test_the_history_is_logged_to_disk_and_complete_in_the_csv(started, tmp_path):
    monitor = started(metrics_log=tmp_path / "m.jsonl")
    for i in range(5):
        log(monitor, i, 4.0 - i)
    rows = list(csv.DictReader(io.StringIO("".join(view(monitor).csv_lines()))))
    assert [int(r["iteration"]) for r in rows] == list(range(5))
    assert float(rows[-1]["loss"]) == 0.0


def test_a_resumed_run_reloads_its_history_up_to_the_resume_iteration(started, tmp_path):
    first = started(metrics_log=tmp_path / "m.jsonl")
    losses = [4.0 - 0.1 * i for i in range(10)]
    for i, loss in enumerate(losses):
        log(first, i, loss)
    first.close()  # killed after iteration 9; the checkpoint was saved before step 7, which a resume redoes
    resumed = started(metrics_log=tmp_path / "m.jsonl", start_iteration=7)
    assert [p.iteration for p in view(resumed).history.since(None)] == list(range(7))
    log(resumed, 7, 1.0)
    assert [p.iteration for p in view(resumed).history.since(None)] == list(range(8))
    rows = list(csv.DictReader(io.StringIO("".join(view(resumed).csv_lines()))))
    assert [int(r["iteration"]) for r in rows] == list(range(8))
    # the EMA continues from the reloaded losses, not from scratch
    assert view(resumed).history.last().loss_ema == pytest.approx(tensorboard_smoothed(losses[:7] + [1.0]))


def test_status_reports_figures_rate_eta_and_the_trend_of_the_history(started):
    monitor = started()
    for i in range(0, 40):
        monitor.iteration(iteration=i, tokens=256, timestamp=1000.0 + 30 * i)
        log(monitor, i, 4.0 - 0.05 * i, t=1000.0 + 30 * i)  # one log point every 30 s
    status = view(monitor).status(now=1000.0 + 30 * 39)
    samples = [(p.timestamp, p.loss) for p in view(monitor).history.since(None)]
    assert status["trend"]["state"] == loss_trend(samples).state == "improving"
    assert status["iterations_per_second"] == pytest.approx(1 / 30)
    assert status["eta_seconds"] == pytest.approx((100 - 39) * 30)
    assert status["loss"] == pytest.approx(4.0 - 0.05 * 39)
    assert status["parameters_total"] == 1234 and status["state"] == "running"


def test_the_model_tree_is_served_as_the_loop_handed_it_over(started):
    tree = {"name": "", "type": "Net", "kind": "model", "parameters": 12,
            "children": [{"name": "fc", "type": "Linear", "kind": "linear", "shapes": {"weight": [3, 4]},
                          "parameters": 12}]}
    monitor = started(model_tree=tree)
    assert view(monitor).model() == {"model_config": MODEL, "parameters": {"total": 1234, "mlp": 600}, "tree": tree}
    assert view(started()).model()["tree"] is None


def test_an_eval_of_the_val_split_alone_leaves_the_train_split_unknown(started):
    monitor = started()
    monitor.evaluated(iteration=5, val_loss=2.5, best_val_loss=2.5)
    log(monitor, 5, 3.0)
    assert value(monitor, "nanogpt_eval_loss", split="val") == 2.5
    assert math.isnan(value(monitor, "nanogpt_eval_loss", split="train"))
    point = view(monitor).history.since(None)[-1]
    assert (point.val_loss, point.eval_train_loss) == (2.5, None)
    assert view(monitor).status()["best_val_loss"] == 2.5


def test_other_logged_values_are_exported_by_name(started):
    monitor = started()
    monitor.log(iteration=1, loss=3.0, scalars={"epoch": 0.5, "val/acc": 0.25})
    assert value(monitor, "nanogpt_logged_scalar", key="epoch") == 0.5
    assert value(monitor, "nanogpt_logged_scalar", key="val/acc") == 0.25
    assert view(monitor).status()["scalars"] == {"epoch": 0.5, "val/acc": 0.25}


def test_logged_value_names_are_bounded(started):
    from exporter.catalogue import MAX_LOGGED_SCALARS

    monitor = started()
    monitor.log(iteration=1, loss=3.0, scalars={f"v{i}": i for i in range(MAX_LOGGED_SCALARS + 1)})
    assert len(view(monitor).status()["scalars"]) == MAX_LOGGED_SCALARS
    assert value(monitor, "nanogpt_exporter_errors_total") == 1
    assert value(monitor, "nanogpt_train_loss") == 3.0  # the rest of the log point still counts
    assert view(monitor).history.last().iteration == 1


def test_an_unusable_metrics_log_costs_the_disk_copy_only(started, tmp_path):
    monitor = started(metrics_log=tmp_path)  # a directory: neither readable nor writable as a log
    log(monitor, 1, 3.0)
    assert value(monitor, "nanogpt_training_state", state="running") == 1
    assert value(monitor, "nanogpt_exporter_errors_total") == 2  # the reload and the append
    assert [p.iteration for p in view(monitor).history.since(None)] == [1]
    assert value(monitor, "nanogpt_train_loss") == 3.0


def test_a_new_process_of_a_rank_counts_from_zero(started):
    first = started()
    for i in range(1, 4):
        first.iteration(iteration=i, tokens=256, timestamp=1000.0 + i)
    first.close()  # the process is gone; torchrun restarts the rank in the same run directory
    again = started(start_iteration=3)
    assert value(again, "nanogpt_iterations_total") == 0 and value(again, "nanogpt_tokens_total") == 0
    assert value(again, "nanogpt_iteration") == 3


def socket_count() -> int:
    """Sockets this process holds open (Linux: /proc/self/fd links read socket:[inode])."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return count


def test_recording_opens_no_socket_and_starts_no_thread(started):
    sockets, threads = socket_count(), threading.active_count()
    monitor = started()
    for i in range(1, 11):
        monitor.iteration(iteration=i, tokens=256, timestamp=1000.0 + i)
        log(monitor, i, 3.0)
    monitor.evaluated(iteration=10, train_loss=2.9, val_loss=3.1)
    monitor.run_ended(iteration=10)
    assert (socket_count(), threading.active_count()) == (sockets, threads)


def test_the_status_counts_the_steps_between_log_points(started):
    monitor = started()
    log(monitor, 0, 4.0)
    for i in range(1, 8):
        monitor.iteration(iteration=i, tokens=256, timestamp=1000.0 + i)
    assert view(monitor).status()["iteration"] == 7  # from the shared file, no journal line per step


def test_a_non_finite_figure_the_loop_hands_over_is_null_in_the_api_not_a_lost_event(run_dir):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=run_dir)
    monitor.run_started(max_iterations=100, model_config={**MODEL, "dropout": math.nan},
                        parameters={"total": 1234})
    assert view(monitor).model()["model_config"]["dropout"] is None
    assert math.isnan(value(monitor, "nanogpt_model_config", field="dropout"))
    assert view(monitor).status()["state"] == "running"
    assert value(monitor, "nanogpt_exporter_errors_total") == 0
