"""deploy/k8s, the kustomize base, offline: `kubectl kustomize` renders it, every core document
validates with kubernetes-validate, the prometheus-operator resources match their CRD schemas,
the generated files equal their sources, the PrometheusRule's groups pass promtool, and each pod is
a trainer writing its ranks' figures into a shared emptyDir plus one monitor container serving them
on the one port the PodMonitor scrapes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.grafana import DASHBOARD_DIR
from tests.support.procs import PROMETHEUS_RULES, REPO, require

K8S = REPO / "deploy" / "k8s"
NPM_DIR = REPO / "tests" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests promise to fit (Indexed Jobs are GA since 1.24)
CORE_KINDS = {"Service", "PersistentVolumeClaim", "Job", "ConfigMap"}
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}


def load_generator():
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()


@cache
def rendered() -> tuple[dict, ...]:
    """The documents of `kubectl kustomize deploy/k8s`."""
    result = subprocess.run([require("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(kind: str) -> list[dict]:
    return [d for d in rendered() if d["kind"] == kind]


def run_tool(*args) -> str:
    result = subprocess.run([require(str(args[0])), *map(str, args[1:])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_kustomize_renders_the_workload_monitoring_and_dashboards():
    assert {d["kind"] for d in rendered()} == CORE_KINDS | OPERATOR_KINDS
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered()}
    assert {("Job", "nanogpt"), ("Service", "nanogpt"), ("PodMonitor", "nanogpt"),
            ("ConfigMap", "nanogpt-dashboard-training"), ("ConfigMap", "nanogpt-dashboard-mobile")} <= names


def test_every_core_document_validates_against_the_kubernetes_schema():
    core = [d for d in rendered() if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in core} == CORE_KINDS
    for document in core:
        # strict: an unknown or misspelt field is an error too
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_core_validation_catches_a_misspelt_field():
    (job,) = of_kind("Job")
    broken = json.loads(json.dumps(job))
    broken["spec"]["completionsMode"] = broken["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def validate_crds(documents: list[dict]) -> list[dict]:
    """Each document checked by tests/k8s/validate-crds.mjs against the pinned operator CRD schemas."""
    if not (NPM_DIR / "node_modules" / "@kubernetes-models").is_dir() or not shutil.which("node"):
        message = "tests/k8s/node_modules missing: run `npm ci --prefix tests/k8s`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["node", str(NPM_DIR / "validate-crds.mjs")], input=json.dumps(documents),
                            capture_output=True, text=True, cwd=NPM_DIR, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_operator_resources_match_the_prometheus_operator_crd_schemas():
    example = yaml.safe_load((K8S / "examples" / "alertmanagerconfig.yaml").read_text())
    documents = [d for d in rendered() if d["kind"] in OPERATOR_KINDS] + [example]
    results = validate_crds(documents)
    assert sorted(r["kind"] for r in results) == ["AlertmanagerConfig", "PodMonitor", "PrometheusRule"]
    assert all(r["errors"] == [] for r in results), results


def test_crd_validation_catches_a_bad_duration():
    (monitor,) = of_kind("PodMonitor")
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    (result,) = validate_crds([broken])
    assert "interval must match pattern" in result["errors"][0]


def test_generated_files_are_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(K8S / "generate.py"), "--out", str(tmp_path)], check=True, timeout=60)
    generated = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(str(p.relative_to(K8S)) for p in K8S.rglob("*")
                       if p.is_file() and p.name not in ("generate.py", "kustomization.yaml"))  # fmt: skip
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_text() == (K8S / name).read_text(), (
            f"deploy/k8s/{name} is stale: run `python deploy/k8s/generate.py`")


def test_prometheusrule_groups_equal_the_rule_files():
    (rule,) = of_kind("PrometheusRule")
    sources = [g for p in sorted(PROMETHEUS_RULES.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]]
    assert rule["spec"]["groups"] == sources


def test_prometheusrule_groups_pass_promtool_check_and_unit_tests(tmp_path):
    (rule,) = of_kind("PrometheusRule")
    extracted = {g["name"]: g for g in rule["spec"]["groups"]}
    # one file per source file, holding that file's groups as the PrometheusRule has them: the unit
    # tests list their rule files in dependency order, and promtool evaluates groups in that order
    rules = {}
    for source in sorted(PROMETHEUS_RULES.glob("*.yml")):
        names = [g["name"] for g in yaml.safe_load(source.read_text())["groups"]]
        rules[source.name] = tmp_path / "rules" / source.name
        rules[source.name].parent.mkdir(exist_ok=True)
        rules[source.name].write_text(yaml.safe_dump({"groups": [extracted.pop(n) for n in names]}, sort_keys=False))
    assert not extracted, f"groups in the PrometheusRule that no rule file has: {sorted(extracted)}"
    run_tool("promtool", "check", "rules", *rules.values())
    tests = []
    for source in sorted((REPO / "prometheus" / "tests").glob("*.yml")):
        suite = yaml.safe_load(source.read_text())
        suite["rule_files"] = [str(rules[Path(f).name]) for f in suite["rule_files"]]
        tests.append(tmp_path / source.name)
        tests[-1].write_text(yaml.safe_dump(suite, sort_keys=False))
    output = run_tool("promtool", "test", "rules", *tests)
    assert "FAILED" not in output and output.count("SUCCESS") == len(tests)


def test_dashboard_configmaps_carry_the_dashboards_for_grafanas_sidecar():
    maps = {m["metadata"]["name"]: m for m in of_kind("ConfigMap")}
    sources = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(maps) == len(sources)
    for source in sources:
        configmap = maps[source.stem.replace("nanogpt-", "nanogpt-dashboard-")]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # kube-prometheus-stack's default
        assert configmap["data"] == {source.name: source.read_text()}


def pod_spec(documents) -> dict:
    (job,) = [d for d in documents if d["kind"] == "Job"]
    return job["spec"]["template"]["spec"]


def container(documents, name: str = "trainer") -> dict:
    (found,) = [c for c in pod_spec(documents)["containers"] if c["name"] == name]
    return found


def torchrun_flag(trainer: dict, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in trainer["args"] if a.startswith(f"--{name}=")]
    return value


def monitor_flag(monitor: dict, name: str) -> str:
    """The value of `nanogpt-monitor serve --NAME=VALUE` (or `--NAME VALUE`)."""
    args = monitor["args"]
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    values += [args[i + 1] for i, a in enumerate(args[:-1]) if a == f"--{name}"]
    (value,) = values
    return value


def pod_problems(documents) -> list[str]:
    """How the Job's pod differs from its shape: a `trainer` whose ranks only write their figures into
    a shared emptyDir, and a regular `monitor` container serving them all on one port, `metrics`."""
    pod = pod_spec(documents)
    names = [c["name"] for c in pod["containers"]]
    if names != ["trainer", "monitor"]:
        return [f"containers {names}, not trainer and monitor"]
    trainer, monitor = container(documents), container(documents, "monitor")
    problems = []
    if pod.get("initContainers") or "restartPolicy" in monitor:
        # the kubelet stops a native sidecar when the trainer exits, before the linger's scrapes
        problems.append("a native sidecar")
    if pod.get("shareProcessNamespace") is not True:
        problems.append("no shared process namespace: the monitor cannot see a rank killed with -9")
    if "--metrics-external" not in trainer["args"]:
        problems.append("the trainer starts its own monitor")
    own_monitor = re.compile(r"--metrics-(host|port|linger|web-config)\b")  # flags of a monitor it would start
    problems += [f"trainer flag {a}" for a in trainer["args"] if own_monitor.match(a)]
    problems += [f"trainer port {p['name']}" for p in trainer["ports"] if p["name"] != "c10d"]
    args = monitor["args"]
    if monitor["command"] != ["nanogpt-monitor"] or args[:1] != ["serve"]:
        problems.append(f"monitor runs {monitor['command'] + args[:1]}, not nanogpt-monitor serve")
    directory = torchrun_flag(trainer, "metrics-dir")
    if monitor_flag(monitor, "dir") != directory:
        problems.append(f"the monitor serves {monitor_flag(monitor, 'dir')}, the ranks write {directory}")
    mounts = {c["name"]: [m["name"] for m in c["volumeMounts"] if m["mountPath"] == directory]
              for c in (trainer, monitor)}  # fmt: skip
    volumes = {v["name"]: v for v in pod["volumes"]}
    if mounts["trainer"] != mounts["monitor"] or len(mounts["trainer"]) != 1:
        problems.append(f"{directory} mounted from {mounts}, not one shared volume")
    elif set(volumes[mounts["trainer"][0]]) != {"name", "emptyDir"}:
        problems.append(f"{directory} is not an emptyDir")
    if (monitor_flag(monitor, "host"), int(monitor_flag(monitor, "port"))) != ("0.0.0.0", generate.METRICS_PORT):
        problems.append("the monitor does not listen on the pod's metrics port")
    if monitor["ports"] != [{"name": "metrics", "containerPort": generate.METRICS_PORT}]:
        problems.append(f"monitor ports {monitor['ports']}")
    for probe in ("readinessProbe", "livenessProbe"):
        if monitor.get(probe, {}).get("httpGet") != {"path": "/healthz", "port": "metrics"}:
            problems.append(f"monitor {probe} is not GET /healthz on metrics")
    return problems


TOPOLOGIES = [(generate.NNODES, generate.NPROC_PER_NODE), (4, 8), (1, 1)]


@pytest.mark.parametrize("nnodes,nproc", TOPOLOGIES)
def test_one_value_sets_the_ranks_per_pod_and_one_port_serves_them_all(nnodes, nproc):
    documents = [*generate.trainer(nnodes, nproc, gpus=False), generate.pod_monitor()]
    (job,) = [d for d in documents if d["kind"] == "Job"]
    trainer = container(documents)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(torchrun_flag(trainer, "nnodes")) == nnodes
    assert int(torchrun_flag(trainer, "nproc_per_node")) == nproc
    assert int(torchrun_flag(trainer, "gradient_accumulation_steps")) % (nnodes * nproc) == 0
    # however many ranks: one metrics port per pod, the monitor's, and the PodMonitor's one endpoint
    assert pod_problems(documents) == []
    (monitor,) = [d for d in documents if d["kind"] == "PodMonitor"]
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_the_pod_is_a_trainer_writing_its_figures_and_a_monitor_serving_them():
    assert pod_problems(rendered()) == []
    trainer, monitor, pod = container(rendered()), container(rendered(), "monitor"), pod_spec(rendered())
    assert torchrun_flag(trainer, "metrics-dir") == "/run/nanogpt-monitor"
    assert monitor["image"] == trainer["image"]
    assert int(monitor_flag(monitor, "linger")) >= 2 * 15  # two scrapes at the PodMonitor's 15s see the end
    liveness = monitor["livenessProbe"]  # restartPolicy Never: a monitor this probe kills fails the pod
    assert liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3) >= 60
    assert monitor["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}}  # no limits to be killed by
    # the monitor reads the ranks' files and checks their pids as the same user that wrote them
    user = pod["securityContext"]["runAsUser"]
    assert monitor.get("securityContext", {}).get("runAsUser", user) == user
    assert trainer.get("securityContext", {}).get("runAsUser", user) == user
    assert monitor["securityContext"]["allowPrivilegeEscalation"] is False


def _native_sidecar(documents):
    pod = pod_spec(documents)
    pod["initContainers"] = [{**pod["containers"].pop(), "restartPolicy": "Always"}]
    pod["containers"].append({**pod["initContainers"][0], "name": "monitor"})  # still found by name


def _separate_volumes(documents):
    pod = pod_spec(documents)
    pod["volumes"].append({"name": "elsewhere", "emptyDir": {}})
    container(documents, "monitor")["volumeMounts"][0]["name"] = "elsewhere"


PER_RANK_PORTS = {"name": "metrics-0", "containerPort": 8000}
BROKEN_PODS = {
    "per-rank port": lambda d: container(d)["ports"].insert(0, dict(PER_RANK_PORTS)),
    "own monitor": lambda d: container(d)["args"].remove("--metrics-external"),
    "trainer port flag": lambda d: container(d)["args"].append("--metrics-port=8000"),
    "no shared pids": lambda d: pod_spec(d).pop("shareProcessNamespace"),
    "native sidecar": _native_sidecar,
    "separate volumes": _separate_volumes,
    "other directory": lambda d: container(d, "monitor")["args"].__setitem__(1, "--dir=/tmp"),
    "no probe": lambda d: container(d, "monitor").pop("livenessProbe"),
    "no monitor": lambda d: pod_spec(d)["containers"].pop(),
}


@pytest.mark.parametrize("breakage", BROKEN_PODS)
def test_pod_checks_catch_each_departure_from_the_shape(breakage):
    documents = json.loads(json.dumps(list(rendered())))
    BROKEN_PODS[breakage](documents)
    assert pod_problems(documents)


def test_pods_rendezvous_at_pod_zero_through_the_headless_service():
    (job,), (service,) = of_kind("Job"), of_kind("Service")
    pod = job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    trainer = container(rendered())
    host, port = torchrun_flag(trainer, "rdzv_endpoint").split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # Indexed Job pod 0's hostname
    assert torchrun_flag(trainer, "rdzv_backend") == "c10d"
    assert int(port) in {p["containerPort"] for p in trainer["ports"]} and torchrun_flag(trainer, "max_restarts") == "0"
    (claim,) = of_kind("PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = [m for m in trainer["volumeMounts"] if m["mountPath"] == "/out"][0]
    assert volumes[out["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert torchrun_flag(trainer, "out_dir").startswith("/out/")


def test_podmonitor_selects_the_trainer_pods_with_the_labels_rules_and_dashboards_use():
    (monitor,), (job,) = of_kind("PodMonitor"), of_kind("Job")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    alert_rules = (PROMETHEUS_RULES / "nanogpt-alerts.yml").read_text()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]  # one target per pod = per node
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert f'job="{relabel["job"]["replacement"]}"' in alert_rules  # NanoGPTExporterDown selects up{job=...}
    assert relabel["node"]["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]  # the target is the node
    assert "rank" not in relabel  # rank is each series' own label: one target serves several ranks
    assert endpoint["filterRunning"] is False  # a crashed pod's target stays, down, for NanoGPTExporterDown
    assert monitor["metadata"]["labels"]["release"] == (of_kind("PrometheusRule")[0]["metadata"]["labels"]["release"])


def test_alertmanager_example_routes_as_alertmanager_yml():
    example = yaml.safe_load((K8S / "examples" / "alertmanagerconfig.yaml").read_text())
    source = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())
    route = example["spec"]["route"]
    assert route["groupBy"] == source["route"]["group_by"] == ["alertname", "run_id"]
    matchers = [[f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in r["matchers"]] for r in route["routes"]]
    assert matchers == [r["matchers"] for r in source["route"]["routes"]]
    assert [r["equal"] for r in example["spec"]["inhibitRules"]] == [r["equal"] for r in source["inhibit_rules"]]


def test_kustomization_uses_only_what_old_kustomize_renders():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # kubectl 1.20 ships kustomize v2: no components, replacements, labels or helmCharts
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
    files = [f for g in kustomization["configMapGenerator"] for f in g["files"]] + kustomization["resources"]
    assert all(not re.match(r"\.\.|/", f) and (K8S / f).is_file() for f in files), files
