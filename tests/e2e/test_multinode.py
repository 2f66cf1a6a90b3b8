"""End to end: a multi-node torchrun run on one machine, 2 "nodes" x 2 CPU processes (gloo, c10d rendezvous).

Each node is its own `torchrun --nnodes=2 --node_rank=N` process, as on two hosts; on one machine the
nodes take distinct ports (each node's monitor serves all its ranks on its --metrics-port). A real
Prometheus discovers the four ranks through file_sd target groups that carry Kubernetes-style target
labels (namespace, pod, node), as a PodMonitor would add. The same global batch on one node (4
processes) must give the same loss curve and the same final weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.procs import REPO, Prometheus, Trainer, consecutive_free_ports, free_port, wait_until
from tests.support.trainer import tiny_flags

pytestmark = pytest.mark.slow

RUN_ID = "e2e-multinode"
NODES, PROCS_PER_NODE = 2, 2
# 4 micro-steps over 4 ranks: one per rank per iteration, the same global batch in both topologies
TRAIN = dict(max_iters=10, eval_interval=5, log_interval=1, gradient_accumulation_steps=4, run_id=RUN_ID)
FINISHED = re.compile(r"^\[rank (\d)\] run (\S+) finished: iteration 10, params sha256 (\w+)$", re.M)
KUBERNETES_HOSTS = ("gpu-node-a", "gpu-node-b")  # what __meta_kubernetes_pod_node_name would give


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "nanogpt"]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory):
    """(prometheus, base ports, node processes) once all four ranks finished and were scraped finished."""
    workdir = tmp_path_factory.mktemp("multinode")
    first = consecutive_free_ports(NODES)
    bases = [first + node for node in range(NODES)]  # one monitor, one port per node
    groups = [{"targets": [f"127.0.0.1:{base}"],
               "labels": {"namespace": "ml", "pod": f"nanogpt-{node}-x7k2p", "node": KUBERNETES_HOSTS[node]}}
              for node, base in enumerate(bases)]  # fmt: skip
    prometheus = Prometheus(workdir / "prometheus", [], target_groups=groups)
    rendezvous = f"127.0.0.1:{free_port()}"
    nodes = []
    try:
        for node, base in enumerate(bases):
            command = torchrun(f"--nnodes={NODES}", f"--node_rank={node}", f"--nproc_per_node={PROCS_PER_NODE}",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint={rendezvous}", "--max_restarts=0")
            flags = tiny_flags(workdir / f"node{node}", **TRAIN, no_metrics=False)
            nodes.append(Trainer(workdir / f"node{node}", *flags, f"--metrics-port={base}", "--metrics-linger=600",
                                 command=command, wait_for_metrics=False))  # fmt: skip
        wait_until(lambda: all(len(FINISHED.findall(n.output())) == PROCS_PER_NODE or not n.running() for n in nodes),
                   timeout=300, what="every rank of both nodes to finish")
        for n in nodes:
            assert n.running(), f"a node exited before lingering:\n{n.output()[-3000:]}"
        finished = f'nanogpt_training_state{{run_id="{RUN_ID}",state="finished"}} == 1'
        wait_until(lambda: len(prometheus.query(finished)) == NODES * PROCS_PER_NODE, timeout=60,
                   what="Prometheus to scrape all four ranks finished")
        yield prometheus, bases, nodes, workdir
    finally:
        for n in nodes:
            n.stop()
        prometheus.stop()


def test_prometheus_sees_one_target_per_node_with_its_ranks(multinode):
    prometheus, bases, _, _ = multinode
    assert len(prometheus.targets_up()) == NODES
    series = prometheus.query(f'nanogpt_iteration{{run_id="{RUN_ID}"}}')
    by_rank = {s["metric"]["rank"]: s["metric"]["instance"] for s in series}
    assert by_rank == {"0": f"127.0.0.1:{bases[0]}", "1": f"127.0.0.1:{bases[0]}",
                       "2": f"127.0.0.1:{bases[1]}", "3": f"127.0.0.1:{bases[1]}"}
    assert {float(s["value"][1]) for s in series} == {10.0}


def test_every_rank_names_its_node_and_keeps_the_discovered_target_labels(multinode):
    prometheus, _, _, _ = multinode
    info = prometheus.query(f'nanogpt_run_info{{run_id="{RUN_ID}"}}')
    # The exporter says node rank and world size; the target's own `node` label (the Kubernetes node)
    # wins the name, so Prometheus keeps the exporter's value as exported_node.
    seen = {s["metric"]["rank"]: (s["metric"]["exported_node"], s["metric"]["node"], s["metric"]["pod"],
                                  s["metric"]["namespace"], s["metric"]["world_size"]) for s in info}
    assert seen == {
        "0": ("0", "gpu-node-a", "nanogpt-0-x7k2p", "ml", "4"), "1": ("0", "gpu-node-a", "nanogpt-0-x7k2p", "ml", "4"),
        "2": ("1", "gpu-node-b", "nanogpt-1-x7k2p", "ml", "4"), "3": ("1", "gpu-node-b", "nanogpt-1-x7k2p", "ml", "4"),
    }


def test_the_loss_curve_equals_one_node_with_the_same_global_batch(multinode):
    _, _, nodes, workdir = multinode
    single = workdir / "single"
    run = subprocess.run([*torchrun("--standalone", f"--nproc_per_node={NODES * PROCS_PER_NODE}"),
                          *tiny_flags(single, **TRAIN, no_metrics=False), "--metrics-port=0"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    def curve(out_dir):
        lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        return [(p["iteration"], p["loss"], p.get("val_loss")) for p in lines if "sample" not in p]  # points only

    multi_curve = curve(workdir / "node0" / "out")
    assert [i for i, _, _ in multi_curve] == list(range(11))
    assert multi_curve == curve(single / "out")
    # every rank of both topologies ends with the same weights
    digests = {d for n in nodes for _, _, d in FINISHED.findall(n.output())}
    digests |= {d for _, _, d in FINISHED.findall(run.stdout)}
    assert len(digests) == 1
