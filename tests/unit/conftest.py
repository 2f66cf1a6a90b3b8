"""The unit layer opens no socket and starts no process: every test here runs under `no_sockets`.

While a test runs, making a socket (socket.socket, create_connection, create_server, socketpair,
fromfd) or a process (subprocess.Popen and so subprocess.run, os.fork, os.system, os.posix_spawn)
raises Forbidden. Forbidden is a BaseException, so the `except Exception` that keeps monitoring out
of the training loop cannot swallow it; and each attempt is also noted, so a test whose code
caught it anyway still fails at teardown. Route logic is called as functions instead
(tests/support/routes.py); what needs a real socket or process belongs in tests/integration.

Two sockets are opened before any guard goes up, by libraries for themselves: asyncio's loop wakes
itself through a socketpair (the `loop` fixture makes one per session), and urllib3 probes for IPv6
at import (imported below).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess

import pytest

try:  # urllib3 (transformers reaches it through accelerate and boto3) binds a socket at import to see
    import urllib3  # noqa: F401  whether IPv6 works: imported here, before any guard, that probe is no test's
except ImportError:
    pass


class Forbidden(BaseException):
    """A unit test opened a socket or started a process."""


class Guard:
    """What a test tried: `attempts` lists each forbidden call by name."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def refuse(self, what: str):
        def refused(*args, **kwargs):
            self.attempts.append(what)
            raise Forbidden(f"{what}() in a unit test: sockets and processes belong in tests/integration")
        return refused


REAL_SOCKET = socket.socket


class _LikeSocket(type):
    def __instancecheck__(cls, instance) -> bool:  # the sockets made before the guard are still sockets
        return isinstance(instance, REAL_SOCKET)


class _NoSocket(REAL_SOCKET, metaclass=_LikeSocket):
    """socket.socket as the unit layer sees it: isinstance() against it still works, making one does not."""

    guard: Guard

    def __new__(cls, *args, **kwargs):
        cls.guard.refuse("socket.socket")()


class _NoPopen(subprocess.Popen):
    guard: Guard

    def __init__(self, *args, **kwargs):  # Popen's __del__ must find no half-made process
        self._child_created = False
        self.guard.refuse("subprocess.Popen")()


SOCKET_FUNCTIONS = ("create_connection", "create_server", "socketpair", "fromfd")
PROCESS_FUNCTIONS = ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp")


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """Forbid sockets and processes for the test; fail it if it made any attempt, even a caught one."""
    guard = Guard()
    monkeypatch.setattr(_NoSocket, "guard", guard, raising=False)
    monkeypatch.setattr(_NoPopen, "guard", guard, raising=False)
    monkeypatch.setattr(socket, "socket", _NoSocket)
    monkeypatch.setattr(subprocess, "Popen", _NoPopen)
    for name in SOCKET_FUNCTIONS:
        monkeypatch.setattr(socket, name, guard.refuse(f"socket.{name}"))
    for name in PROCESS_FUNCTIONS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, guard.refuse(f"os.{name}"))
    yield guard
    assert not guard.attempts, f"this unit test tried {', '.join(guard.attempts)}"


@pytest.fixture(scope="session")
def loop():
    """One asyncio loop for the layer's route tests, made before any guard (its self-pipe is a socketpair)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
