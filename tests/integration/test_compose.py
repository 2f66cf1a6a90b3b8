"""docker-compose.yml: valid offline (compose-spec schema and Debian's docker-compose) with
no environment variable set, no known Grafana password, every mounted path exists, and
the services agree with Prometheus' targets and Grafana's datasource. Checks read the
config as `docker-compose config` resolves it with an empty environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.procs import REPO, require

COMPOSE_FILE = REPO / "docker-compose.yml"


def docker_compose_config(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`docker-compose config` with only PATH and `env` in its environment (`env -i PATH=$PATH ...`)."""
    return subprocess.run([require("docker-compose"), *args, "-f", str(COMPOSE_FILE), "config"],
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"], **env}, cwd=REPO,
                          timeout=60)  # fmt: skip


@cache
def resolved() -> dict:
    """The compose file after interpolation, merges and path resolution, all profiles on, nothing set."""
    result = docker_compose_config({}, "--profile", "cpu", "--profile", "gpu")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def services() -> dict:
    return resolved()["services"]


def published(service: str) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port."""
    ports = []
    for spec in services()[service].get("ports", []):
        ip, host, container = re.fullmatch(r"([\d.]+):(\d+):(\d+)(?:/tcp)?", str(spec)).groups()
        ports.append((ip, int(host), int(container)))
    return ports


def test_compose_file_matches_the_compose_spec_schema():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_the_file_with_an_empty_environment(profile):
    result = docker_compose_config({}, *profile)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr  # e.g. a variable that is not set and has no default


def run_password_script(password_file: Path, grafana_admin_password: str = "") -> subprocess.CompletedProcess:
    """The grafana-password service's script, run by this machine's POSIX sh on a file in a temp dir."""
    service = services()["grafana-password"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script = service["command"][0].replace("$$", "$")  # compose's escape for a literal $
    env = {"PATH": os.environ["PATH"], "PASSWORD_FILE": str(password_file),
           "GRAFANA_ADMIN_PASSWORD": grafana_admin_password}  # fmt: skip
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)


def test_grafana_reads_its_admin_password_from_the_file_made_on_first_start():
    grafana, maker = services()["grafana"], services()["grafana-password"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    password_file = PurePosixPath(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"])
    assert maker["environment"]["PASSWORD_FILE"] == str(password_file)
    assert grafana["depends_on"]["grafana-password"]["condition"] == "service_completed_successfully"
    # both see the file in the same named volume, at the same path
    (volume,) = [v for v in maker["volumes"] if password_file.is_relative_to(v.split(":")[1])]
    assert volume.split(":")[0] in resolved()["volumes"] and volume in grafana["volumes"]
    assert maker["image"] == grafana["image"]


def test_there_is_no_default_admin_password_in_the_compose_file():
    text = COMPOSE_FILE.read_text()
    assert re.findall(r"\$\{GRAFANA_ADMIN_PASSWORD[^}]*\}", text) == ["${GRAFANA_ADMIN_PASSWORD:-}"]
    assert not re.search(r"GF_SECURITY_ADMIN_PASSWORD\s*[:=]", text)
    assert services()["grafana-password"]["environment"]["GRAFANA_ADMIN_PASSWORD"] == ""


def test_first_start_makes_a_random_password_and_later_starts_keep_it(tmp_path):
    passwords = []
    for machine in ("a", "b"):
        password_file = tmp_path / machine / "admin-password"
        password_file.parent.mkdir()
        result = run_password_script(password_file)
        assert result.returncode == 0, result.stderr
        passwords.append(password_file.read_text())
        assert re.fullmatch(r"[A-Za-z0-9]{24}\n", passwords[-1])
        assert password_file.stat().st_mode & 0o077 == 0  # only Grafana's user may read it
        assert run_password_script(password_file).returncode == 0
        assert password_file.read_text() == passwords[-1]
    assert passwords[0] != passwords[1]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["admin-password"] * 2  # no temp file left


def test_a_user_set_password_wins_on_first_start_and_is_reported_ignored_later(tmp_path):
    password_file = tmp_path / "admin-password"
    assert run_password_script(password_file, "chosen by the user").returncode == 0
    assert password_file.read_text() == "chosen by the user\n"
    assert run_password_script(password_file, "chosen by the user").stderr == ""
    later = run_password_script(password_file, "a new one")
    assert later.returncode == 0 and "GRAFANA_ADMIN_PASSWORD ignored" in later.stderr
    assert password_file.read_text() == "chosen by the user\n"  # Grafana's database keeps the first one
    resolved_with = yaml.safe_load(docker_compose_config({"GRAFANA_ADMIN_PASSWORD": "x"}).stdout)["services"]
    assert resolved_with["grafana-password"]["environment"]["GRAFANA_ADMIN_PASSWORD"] == "x"


def test_anonymous_viewing_is_off_unless_switched_on():
    assert services()["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert services()["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    result = docker_compose_config({"GRAFANA_ANONYMOUS": "true"})
    assert yaml.safe_load(result.stdout)["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_the_stack_has_its_services_with_pinned_images():
    assert {"trainer", "trainer-gpu", "prometheus", "alertmanager", "grafana", "grafana-password"} <= set(services())
    images = {name: s["image"] for name, s in services().items()}
    for name, image in images.items():  # pulled images carry a version tag; ours are built here
        assert "build" in services()[name] or re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*", image), image
    assert re.fullmatch(r"prom/prometheus:v2\.53\.\d+", images["prometheus"])
    assert re.fullmatch(r"prom/alertmanager:v0\.\d+\.\d+", images["alertmanager"])
    sdk = re.search(r'"grafana-foundation-sdk==(?:\d+!)?(\d+\.\d+)\.', (REPO / "pyproject.toml").read_text())
    assert re.fullmatch(rf"grafana/grafana:{re.escape(sdk.group(1))}\.\d+", images["grafana"])


def test_every_bind_mounted_path_exists():
    mounts = [(name, v.split(":")[0]) for name, s in services().items() for v in s.get("volumes", [])]
    binds = [(name, source) for name, source in mounts if source.startswith("/")]
    assert binds, "expected the config folders to be bind-mounted"
    for name, source in binds:
        assert Path(source).exists(), f"{name} mounts missing path {source}"


def test_config_folders_are_read_only_and_data_lives_in_named_volumes():
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source, target, mode = volume.split(":")
            assert mode == ("ro" if source.startswith("/") else "rw"), f"{name}: {volume}"
    named = {v.split(":")[0] for s in services().values() for v in s.get("volumes", []) if not v.startswith("/")}
    assert {"trainer-out", "prometheus-data", "grafana-data"} <= named <= set(resolved()["volumes"])


def test_only_grafana_is_published_beyond_this_machine():
    assert published("grafana") == [("0.0.0.0", 3000, 3000)]
    for name in ("trainer", "trainer-gpu", "prometheus", "alertmanager"):
        assert published(name) and all(ip == "127.0.0.1" for ip, _, _ in published(name)), name


def one_shot_services() -> set[str]:
    """Services others wait for to exit cleanly (service_completed_successfully), like grafana-password."""
    return {name for s in services().values() for name, dep in (s.get("depends_on") or {}).items()
            if dep["condition"] == "service_completed_successfully"}  # fmt: skip


def test_every_service_has_a_healthcheck_and_a_restart_policy():
    for name, service in services().items():
        if name in one_shot_services():  # runs once and exits: nothing to check or restart
            assert service["restart"] == "no" and "healthcheck" not in service, name
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["restart"] in ("unless-stopped", "always") or service["restart"].startswith("on-failure")


def test_trainer_listens_on_all_interfaces_inside_the_container_on_the_scraped_port():
    prometheus_yml = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus_yml["scrape_configs"]}
    (target,) = jobs["nanogpt"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "trainer"
    for name in ("trainer", "trainer-gpu"):
        command = services()[name]["command"]
        assert "--metrics-host=0.0.0.0" in command
        assert f"--metrics-port={port}" in command
        assert [c for _, _, c in published(name)] == [int(port)]
    assert "trainer" in services()["trainer-gpu"]["networks"]["default"]["aliases"]


def test_prometheus_targets_name_compose_services():
    prometheus_yml = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus_yml["scrape_configs"] for g in job.get("static_configs", [])
               for t in g["targets"]]  # fmt: skip
    targets += [t for am in prometheus_yml["alerting"]["alertmanagers"] for g in am["static_configs"]
                for t in g["targets"]]  # fmt: skip
    for target in targets:
        host, port = target.split(":")
        if host == "localhost":  # Prometheus scraping itself
            continue
        assert host in services() or any(host in (s.get("networks", {}).get("default") or {}).get("aliases", [])
                                         for s in services().values()), target  # fmt: skip
        container_ports = {c for _, _, c in published(host)} if host in services() else set()
        assert int(port) in container_ports, f"{target} is not a port the service publishes"


def test_grafana_datasource_points_at_the_prometheus_service():
    datasources = [d for f in sorted((REPO / "grafana" / "provisioning" / "datasources").glob("*.yml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]  # fmt: skip
    (prometheus,) = [d for d in datasources if d["uid"] == "prometheus"]
    url = urlsplit(prometheus["url"])
    assert url.hostname == "prometheus" and url.hostname in services()
    assert url.port in {c for _, _, c in published("prometheus")}


def test_grafana_home_dashboard_is_a_provisioned_file():
    grafana = services()["grafana"]
    home = PurePosixPath(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    for volume in grafana["volumes"]:
        source, target, _ = volume.split(":")
        if home.is_relative_to(target) and source.startswith("/"):
            assert (Path(source) / home.relative_to(target)).is_file()
            return
    pytest.fail(f"{home} is not inside a bind-mounted folder")


def test_gpu_variant_reserves_an_nvidia_gpu_under_its_profile():
    gpu = services()["trainer-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "--device=cuda" in gpu["command"]
    assert services()["trainer"]["profiles"] == ["cpu"]


# --- the gpu profile: `docker compose --profile gpu up` and nothing more -----------------------------

def started_services(*profiles: str) -> set[str]:
    """The services `docker-compose [--profile P ...] up` starts from a clean environment, as
    docker-compose itself decides: its own profile resolution (the flags, else COMPOSE_PROFILES
    from the environment or .env) and its own Service.enabled_for_profiles, run by the Python
    that runs docker-compose (Debian's), on the resolved file."""
    script = """
import json, sys
from compose.cli.command import get_config_from_options, get_profiles_from_options
from compose.config.environment import Environment
from compose.service import Service
environment = Environment.from_env_file(".")
options = {"--file": [sys.argv[1]], "--profile": sys.argv[2:]}
config = get_config_from_options(".", options, environment)
active = get_profiles_from_options(options, environment)
services = [Service(s["name"], client=None, project="nanogpt", **{k: v for k, v in s.items() if k != "name"})
            for s in config.services]
print(json.dumps(sorted(s.name for s in services if s.enabled_for_profiles(active))))
"""
    interpreter = Path(require("docker-compose")).read_text().splitlines()[0].removeprefix("#!").split()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "NANOGPT_", "COMPOSE_"))}
    result = subprocess.run([*interpreter, "-c", script, str(COMPOSE_FILE), *profiles], capture_output=True,
                            text=True, cwd=REPO, env=clean, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


STACK = {"prometheus", "alertmanager", "grafana", "grafana-password"}


def test_plain_up_runs_the_cpu_trainer_and_no_gpu_service():
    assert started_services() == STACK | {"trainer"}


def test_profile_gpu_alone_swaps_in_the_gpu_trainer_and_dcgm():
    assert started_services("gpu") == STACK | {"trainer-gpu", "dcgm-exporter"}


def test_dcgm_exporter_is_pinned_reserves_the_gpus_and_reads_the_fields_the_dashboards_show():
    dcgm = services()["dcgm-exporter"]
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s/dcgm-exporter:\d+\.\d+\.\d+-\d+\.\d+\.\d+-ubuntu22\.04", dcgm["image"])
    assert dcgm["profiles"] == ["gpu"]
    (device,) = dcgm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and "gpu" in device["capabilities"]
    assert "SYS_ADMIN" in dcgm["cap_add"]  # profiling fields such as DCGM_FI_PROF_SM_ACTIVE
    assert published("dcgm-exporter") == [("127.0.0.1", 9400, 9400)]
    flag, counters = dcgm["command"]
    [(source, target)] = [v.split(":")[:2] for v in dcgm["volumes"]]
    csv = (Path(source) / PurePosixPath(counters).relative_to(target)).read_text()
    fields = {line.split(",")[0].strip() for line in csv.splitlines() if line.strip() and not line.startswith("#")}
    from tests.support.grafana import generator_module

    assert flag == "-f" and set(generator_module("gpu_panels").DCGM_FIELDS) <= fields


def test_prometheus_finds_dcgm_by_its_service_name_on_its_published_port():
    prometheus_yml = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    [job] = [job for job in prometheus_yml["scrape_configs"] if job["job_name"] == "dcgm"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["dcgm-exporter"] and sd["type"] == "A"
    assert sd["port"] in {c for _, _, c in published("dcgm-exporter")}


def test_the_gpu_trainer_can_read_nvml():
    assert "utility" in services()["trainer-gpu"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")
