"""End to end: torchrun with 2 CPU ranks (gloo) gives Prometheus one target, the node's monitor,
with rank 0's and rank 1's series on it."""

import math
import sys

import pytest

from tests.support.procs import Prometheus, Trainer, free_port, wait_until

pytestmark = pytest.mark.slow

RUN_ID = "e2e-ddp"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ddp")
    port = free_port()
    prometheus = Prometheus(workdir / "prometheus", [f"127.0.0.1:{port}"])
    trainer = None
    try:
        # a loader slowed from outside (0.15 s a batch, 40 batches a rank) keeps both ranks alive for
        # some seconds of scrapes: a rank's process figures go with its process
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "tests.support.faulty_train", "--slow_data_seconds=0.15"]
        trainer = Trainer(workdir, f"--metrics-port={port}", f"--run-id={RUN_ID}", "--max_iters=20",
                          "--gradient_accumulation_steps=2", "--eval_interval=10", "--eval_iters=2",
                          "--log_interval=5", "--metrics-linger=600", command=torchrun, wait_for_metrics=False)
        wait_until(lambda: trainer.output().count(f"run {RUN_ID} finished") == 2 or not trainer.running(),
                   timeout=240, what="both ranks to finish")
        assert trainer.running(), f"torchrun exited before lingering:\n{trainer.output()[-3000:]}"
        wait_until(lambda: len(prometheus.query(f'nanogpt_training_state{{run_id="{RUN_ID}",state="finished"}} == 1'))
                   == 2, timeout=60, what="Prometheus to scrape both ranks finished")
        yield prometheus, port, trainer
    finally:
        if trainer is not None:
            trainer.stop()
        prometheus.stop()


def by_rank(prometheus, expr):
    return {s["metric"]["rank"]: (s["metric"]["instance"], float(s["value"][1])) for s in prometheus.query(expr)}


def test_one_target_on_one_port_carries_ranks_0_and_1(ddp):
    prometheus, port, _ = ddp
    assert [t["labels"]["instance"] for t in prometheus.targets_up()] == [f"127.0.0.1:{port}"]
    ranks = by_rank(prometheus, f'nanogpt_iteration{{run_id="{RUN_ID}"}}')
    assert {rank: instance for rank, (instance, _) in ranks.items()} == {
        "0": f"127.0.0.1:{port}", "1": f"127.0.0.1:{port}"}
    assert all(value == 20 for _, value in ranks.values())


def test_only_local_rank_0_starts_a_monitor_and_prints_its_url(ddp):
    _, port, trainer = ddp
    urls = [line for line in trainer.output().splitlines() if "metrics: http" in line]
    assert urls == [f"[rank 0] metrics: http://127.0.0.1:{port}/metrics"]


def test_each_trainer_process_reports_its_own_cpu_and_memory(ddp):
    prometheus, _, _ = ddp
    # over the run: rank 1's process is gone once it finished, and with it its figures
    memory = by_rank(prometheus, f'max_over_time(process_resident_memory_bytes{{run_id="{RUN_ID}"}}[10m])')
    assert set(memory) == {"0", "1"} and all(value > 10e6 for _, value in memory.values())


def test_every_rank_reports_its_own_throughput_and_step_times(ddp):
    prometheus, _, _ = ddp
    tokens = by_rank(prometheus, f'nanogpt_tokens_total{{run_id="{RUN_ID}"}}')
    steps = by_rank(prometheus, f'nanogpt_iteration_duration_seconds_count{{run_id="{RUN_ID}"}}')
    assert set(tokens) == set(steps) == {"0", "1"}
    assert tokens["0"][1] == tokens["1"][1] > 0  # same batch shape per rank
    assert steps["0"][1] == steps["1"][1] == 20


def test_only_rank_0_carries_eval_losses(ddp):
    prometheus, _, _ = ddp
    val = by_rank(prometheus, f'nanogpt_eval_loss{{run_id="{RUN_ID}",split="val"}}')
    assert math.isfinite(val["0"][1])
    assert math.isnan(val["1"][1])
