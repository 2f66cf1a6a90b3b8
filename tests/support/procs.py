"""Real processes for end-to-end tests: Prometheus, Alertmanager, the trainer.

Every process listens on 127.0.0.1 on a port picked by the OS, keeps its data
in the test's temp dir, runs in its own process group, and is killed (group
and all) on stop, even when the test fails. Nothing here sleeps a fixed time:
callers poll with `wait_until`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_RULES = REPO / "prometheus" / "rules"

# A tiny model that still learns visibly in a few seconds on 2 cores.
TINY_MODEL = [
    "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
    "--batch_size=8", "--dropout=0.0", "--device=cpu", "--compile=False",
]


def require(binary: str) -> str:
    """Path of a program the test needs: under CI a missing one fails the test, else it skips."""
    path = shutil.which(binary)
    if path:
        return path
    message = f"{binary} is not installed (the test command installs it: see README)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def corpus_vocab_size() -> int:
    """Characters in the trainer's default corpus (Python's own docs), on which the tests train."""
    from nanogpt.data import default_corpus  # torch-side: only the tests that train need it

    return len(set(default_corpus()))


def tiny_shakespeare() -> Path:
    """nanoGPT's tiny Shakespeare where this machine has it; else the test skips (never fails).

    Only the checks against nanoGPT's own figures need it; everything else trains
    on the default corpus, so the suite passes from a plain clone. Looked for: a
    developer's copy beside the clone, and the trainer's download cache (where
    `nanogpt-train --dataset shakespeare` puts it).
    """
    from nanogpt.data import cache_dir_default

    candidates = [REPO.parent / "shared" / "data" / "tinyshakespeare.txt", cache_dir_default() / "tinyshakespeare.txt"]
    for path in candidates:
        if path.is_file():
            return path
    looked = " and ".join(str(p) for p in candidates)
    pytest.skip(f"tiny Shakespeare is not on this machine (looked for {looked}); "
                "`nanogpt-train --dataset shakespeare --max_iters 0 --no-metrics` downloads it")


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (for programs that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def consecutive_free_ports(count: int) -> int:
    """A port P with P+1 .. P+count-1 free too (a torchrun node serves rank k on --metrics-port + LOCAL_RANK k)."""
    for _ in range(50):
        port, held = free_port(), []
        try:
            for offset in range(1, count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports on 127.0.0.1")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value, which is returned; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the thing polled may not be up yet
            last_error = e
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def http_json(url: str, timeout: float = 5.0, data: bytes | None = None):
    req = urllib.request.Request(url, data=data)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def http_json_answer(url: str, timeout: float = 5.0) -> tuple[int, object]:
    """(status, parsed JSON body) of one GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Process:
    """A child in its own process group whose output is collected line by line."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.args = args
        self.log_path = log_path
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, text=True, bufsize=1, start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        with open(self.log_path, "a") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def find(self, pattern: str):
        """The first match of a regex in the output so far, or None."""
        return re.search(pattern, self.output(), re.MULTILINE)

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, then SIGKILL if it does not go."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)


class Prometheus(Process):
    """A real Prometheus (Debian package) scraping the given targets on loopback."""

    def __init__(self, workdir: Path, targets: list[str], *, scrape_interval: str = "1s",
                 rule_files: list[Path] = (), alertmanager: str | None = None,
                 evaluation_interval: str = "1s", extra_labels: dict | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = (), target_groups: list[dict] = ()):
        """`port`: a given one (a restart on the same address); `extra_args`: more Prometheus flags;
        `target_groups`: file_sd groups ({"targets": [...], "labels": {...}}), each with its own labels."""
        binary = require("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": evaluation_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": "nanogpt",
                "static_configs": [{"targets": list(targets), "labels": extra_labels or {}}],
            }],
        }
        if target_groups:
            (workdir / "targets.json").write_text(json.dumps(list(target_groups)))
            config["scrape_configs"][0]["file_sd_configs"] = [{"files": [str(workdir / "targets.json")]}]
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        config_path = workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed for a generated config.
        config_path.write_text(json.dumps(config, indent=2))
        super().__init__([
            binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            "--log.level=warn", *extra_args,
        ], workdir / "prometheus.log")
        wait_until(lambda: http_get(f"{self.url}/-/ready", timeout=1), timeout=30, what="Prometheus ready")

    def api(self, path: str, **params):
        """GET /api/v1/<path>; returns the `data` field, raising on an API error."""
        query = urllib.parse.urlencode(params)
        body = http_json(f"{self.url}/api/v1/{path}?{query}")
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; returns the result list (vector) or [scalar] for scalars."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1])

    def targets_up(self) -> list[dict]:
        return [t for t in self.api("targets")["activeTargets"] if t["health"] == "up"]

    def reload(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"), timeout=5)


class Alertmanager(Process):
    """A real Alertmanager (Debian package) with the given YAML config, no clustering."""

    def __init__(self, workdir: Path, config_text: str, port: int | None = None):
        binary = require("prometheus-alertmanager")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        config_path = workdir / "alertmanager.yml"
        config_path.write_text(config_text)
        super().__init__([
            binary, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={self.address}", "--cluster.listen-address=", "--log.level=warn",
        ], workdir / "alertmanager.log")
        wait_until(lambda: http_get(f"{self.url}/-/ready", timeout=1), timeout=30, what="Alertmanager ready")


METRICS_URL_LINE = r"metrics: (http://[\d.]+:(\d+))/metrics"
# the same trainer with the fault options of tests/support/faulty_train.py (--inject_nonfinite_at, ...)
FAULTY_TRAINER = [sys.executable, "-m", "tests.support.faulty_train"]


class ServesMetrics(Process):
    """A training process that prints `metrics: http://HOST:PORT/metrics` once it serves them."""

    base_url: str | None = None
    port: int | None = None
    what = "the process"  # for messages

    def wait_for_metrics(self, timeout: float = 60.0) -> str:
        """Block until the process logs its metrics URL; returns the base URL (no path)."""
        def found():
            if not self.running() and not self.find(METRICS_URL_LINE):
                raise AssertionError(f"{self.what} exited early:\n{self.output()[-3000:]}")
            return self.find(METRICS_URL_LINE)
        match = wait_until(found, timeout=timeout, what=f"the metrics URL of {self.what}")
        self.base_url, self.port = match.group(1), int(match.group(2))
        return self.base_url

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class Trainer(ServesMetrics):
    """The real trainer (`python -m nanogpt`) on the default corpus (or `data_file`), metrics on a
    free port, its encoded-data cache in `workdir`."""

    what = "the trainer"

    def __init__(self, workdir: Path, *args: str, data_file: Path | None = None, out_dir: Path | None = None,
                 model: list[str] = TINY_MODEL, env: dict | None = None, wait_for_metrics: bool = True,
                 command: list[str] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir or workdir / "out"
        data = [f"--data-file={data_file}"] if data_file else []  # none: the offline default corpus
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        command = command or [sys.executable, "-m", "nanogpt"]
        args = [*command, *data, f"--data_cache_dir={workdir / 'cache'}", f"--out_dir={self.out_dir}",
                "--metrics-port=0", *model, *args]
        super().__init__(args, workdir / f"trainer-{time.monotonic_ns()}.log", env=full_env, cwd=REPO)
        if wait_for_metrics:
            self.wait_for_metrics()
