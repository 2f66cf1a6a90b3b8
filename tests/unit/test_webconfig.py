"""exporter.webconfig: an exporter-toolkit web config read into one-line errors, and basic auth on every
route, asked of the routes in-process (tests/support/routes.py). TLS, a flood of wrong passwords and the
monitor process refusing a bad file are tests/integration/test_webconfig.py."""

import base64
import json

import bcrypt
import pytest

from exporter import TrainingMonitor, WebConfigError, load_web_config
from tests.support.raw_http import ROUTES
from tests.support.routes import routes_of

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()  # cheap rounds: tests stay fast


def write(tmp_path, text, name="web.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def auth_routes(tmp_path, loop):
    monitor = TrainingMonitor(run_id="r1", rank=0, directory=tmp_path / "run")
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n"))
    yield routes_of(monitor, loop, web_config=config)
    monitor.close()


def get(routes, path, user=None, password=None, authorization=None):
    """(status, headers, body) of one GET, with basic-auth credentials when given."""
    if user is not None:
        authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    answer = routes.get(path, {"Authorization": authorization} if authorization is not None else None)
    return answer.status, answer.headers, answer.body


def test_without_credentials_the_answer_is_401_with_a_basic_challenge(auth_routes):
    status, headers, body = get(auth_routes, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert json.loads(body) == {"error": "unauthorized"} and headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("bob", "s3cret"), ("alice", "")])
def test_wrong_credentials_are_refused(auth_routes, user, password):
    assert get(auth_routes, "/metrics", user, password)[0] == 401


def test_the_right_credentials_are_served_every_time(auth_routes):
    assert [get(auth_routes, "/metrics", "alice", "s3cret")[0] for _ in range(3)] == [200, 200, 200]


@pytest.mark.parametrize("path", ROUTES + ["/nope"])
def test_every_route_is_protected(auth_routes, path):
    assert get(auth_routes, path)[0] == 401  # an unknown path too: nothing is told without a password


def test_a_malformed_authorization_header_is_refused(auth_routes):
    assert get(auth_routes, "/metrics", authorization="Basic %%%not-base64")[0] == 401


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
