"""The unit layer's guard holds: in here no socket opens and no process starts (tests/unit/conftest.py)."""

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.unit.conftest import REAL_SOCKET, Forbidden


@pytest.fixture
def tried(no_sockets):
    """The guard's record of attempts, emptied after the test: these attempts are the point of it."""
    yield no_sockets.attempts
    no_sockets.attempts.clear()


@pytest.mark.parametrize("make", [
    lambda: socket.socket(),
    lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    lambda: socket.socket(socket.AF_UNIX),
    lambda: socket.create_connection(("127.0.0.1", 9)),
    lambda: socket.create_server(("127.0.0.1", 0)),
    lambda: socket.socketpair(),
], ids=["tcp", "udp6", "unix", "create_connection", "create_server", "socketpair"])
def test_making_a_socket_raises(tried, make):
    with pytest.raises(Forbidden, match="in a unit test"):
        make()
    assert len(tried) == 1


@pytest.mark.parametrize("start", [
    lambda: subprocess.Popen([sys.executable, "-c", "pass"]),
    lambda: subprocess.run(["true"]),
    lambda: os.system("true"),
    lambda: os.fork(),
], ids=["Popen", "run", "system", "fork"])
def test_starting_a_process_raises(tried, start):
    with pytest.raises(Forbidden, match="in a unit test"):
        start()
    assert len(tried) == 1


def test_a_library_s_own_socket_raises_too(tried):
    # urllib makes its connection deep inside http.client: the guard is where every socket is made
    with pytest.raises(Forbidden):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)
    assert tried == ["socket.create_connection"]


def test_an_attempt_that_the_code_swallows_still_fails_the_test(tried):
    try:
        socket.socket()
    except BaseException:  # what careless code under test might do
        pass
    assert tried == ["socket.socket"]  # no_sockets' teardown fails a test with any attempt left here


def test_every_test_here_runs_under_the_guard_without_asking_for_it(request):
    assert "no_sockets" in request.fixturenames  # autouse: this test did not name it
    with pytest.raises(Forbidden):
        socket.socket()
    request.getfixturevalue("no_sockets").attempts.clear()


def test_isinstance_against_socket_still_works_for_what_was_made_before(loop):
    # asyncio's loop (made before the guard) holds real sockets; code that checks types must not break
    assert socket.socket is not REAL_SOCKET and isinstance(loop._ssock, socket.socket)
