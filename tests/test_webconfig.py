"""exporter.webconfig: basic auth and TLS from an exporter-toolkit web config, over real HTTP(S)."""

import base64
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import bcrypt
import pytest

from exporter import TrainingMonitor, WebConfigError, load_web_config
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


def get(url, user=None, password=None, context=None):
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


@pytest.fixture
def auth_server(tmp_path):
    server = TrainingMonitor().serve(web_config=load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n")))
    yield server
    server.close()


def test_without_credentials_the_answer_is_401_with_a_basic_challenge(auth_server):
    status, headers = get(auth_server.url + "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("bob", "s3cret"), ("alice", "")])
def test_wrong_credentials_are_refused(auth_server, user, password):
    assert get(auth_server.url + "/metrics", user, password)[0] == 401


def test_the_right_credentials_are_served_every_time(auth_server):
    assert [get(auth_server.url + "/metrics", "alice", "s3cret")[0] for _ in range(3)] == [200, 200, 200]


def test_every_route_is_protected(auth_server):
    assert get(auth_server.url + "/api/status")[0] == 401
    assert get(auth_server.url + "/healthz")[0] == 401


def test_tls_serves_https_with_the_configured_certificate(tmp_path, certificate):
    path = write(certificate, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    server = TrainingMonitor().serve(web_config=load_web_config(path))
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
        server.close()


@pytest.mark.parametrize("text, message", [
    ("basic_auth_users:\n  alice: plaintext\n", "user 'alice' must be a bcrypt hash"),
    ("http_server_config:\n  http2: true\n", "unsupported key 'http_server_config'"),
    ("tls_server_config:\n  cert_file: a.crt\n", "needs exactly cert_file and key_file"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load TLS certificate"),
    ("basic_auth_users: [alice]\n", "must map user names to bcrypt hashes"),
    ("a: [\n", "not valid YAML"),
    ("- 1\n", "expected a mapping"),
])
def test_a_bad_web_config_is_one_line_naming_the_problem(tmp_path, text, message):
    with pytest.raises(WebConfigError) as info:
        load_web_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_trainer_cli_rejects_a_bad_web_config_with_exit_2(tmp_path):
    path = write(tmp_path, "basic_auth_users:\n  alice: plaintext\n")
    result = subprocess.run(
        [sys.executable, "-m", "nanogpt", f"--data_cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path}",
         "--metrics-port=0", f"--metrics-web-config={path}", "--max_iters=1", "--device=cpu",
         "--n_layer=1", "--n_head=1", "--n_embd=16", "--block_size=8", "--batch_size=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {path}: the password of user 'alice' must be a bcrypt hash ($2y$...)"
