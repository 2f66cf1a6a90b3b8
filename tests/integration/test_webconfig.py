"""exporter.webconfig where the wire matters: TLS, a flood of wrong passwords, and a bad file refused by
the monitor process that TrainingMonitor.serve(web_config=PATH) starts and by the trainer's command line.
Reading the file and basic auth on each route are tests/unit/test_webconfig.py."""

import base64
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import bcrypt
import pytest

from exporter import ServeError, TrainingMonitor
from tests.support.procs import REPO, require

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()  # cheap rounds: tests stay fast


def write(tmp_path, text, name="web.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made by the real openssl."""
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(directory / "server.key"), "-out", str(directory / "server.crt")],
                   check=True, capture_output=True, timeout=60)
    return directory


def get(url, user=None, password=None, context=None, timeout=5):
    """(status, headers, body) of one GET; HTTP errors are answers too."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def served(tmp_path, web_config):
    """A monitor recording into tmp_path/run, served with the web config file `web_config`."""
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run")
    try:
        monitor.serve(port=0, web_config=web_config)
    except BaseException:
        monitor.close()
        raise
    return monitor


def test_a_flood_of_wrong_passwords_does_not_stop_metrics_answering_the_right_one(tmp_path):
    slow = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=12)).decode()  # ~0.25 s a check, as meant
    monitor = served(tmp_path, write(tmp_path, f"basic_auth_users:\n  alice: '{slow}'\n"))
    url, stop = monitor.server.url + "/metrics", threading.Event()
    try:
        assert get(url, "alice", "s3cret", timeout=30)[0] == 200  # checked once, then remembered

        def flood():
            while not stop.is_set():
                get(url, "alice", "wrong", timeout=60)

        clients = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
        for client in clients:
            client.start()
        for _ in range(5):
            assert get(url, "alice", "s3cret", timeout=2)[0] == 200  # within 2 s: not queued behind the checks
    finally:
        stop.set()
        monitor.close()


def test_tls_serves_https_with_the_configured_certificate(tmp_path, certificate):
    path = write(certificate, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    monitor = served(tmp_path, path)
    server = monitor.server
    try:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(certificate / "server.crt"))
        assert get(server.url + "/metrics", context=context)[0] == 200
        with pytest.raises(OSError):  # plain HTTP to the TLS port gets no answer (connection closed)
            get(server.url.replace("https", "http") + "/metrics")
        assert get(server.url + "/healthz", context=context)[0] == 200  # still serving after that
        with socket.create_connection(("127.0.0.1", server.port)):  # a client that never starts TLS
            assert get(server.url + "/metrics", context=context)[0] == 200  # does not block the others
    finally:
        monitor.close()


def test_serve_with_an_unusable_web_config_raises_one_line_and_serves_nothing(tmp_path):
    path = write(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    with pytest.raises(ServeError) as info:
        served(tmp_path, path)
    assert str(info.value) == f"{path}: the password of user 'alice' must be a bcrypt hash ($2y$...)"


def test_the_trainer_cli_rejects_a_bad_web_config_with_exit_2(tmp_path):
    path = write(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    result = subprocess.run(
        [sys.executable, "-m", "nanogpt", f"--data_cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path}",
         "--metrics-port=0", f"--metrics-web-config={path}", "--max_iters=1", "--device=cpu",
         "--n_layer=1", "--n_head=1", "--n_embd=16", "--block_size=8", "--batch_size=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {path}: the password of user 'alice' must be a bcrypt hash ($2y$...)"
