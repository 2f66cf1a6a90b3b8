"""Basic auth and TLS for the exporter's server, from a Prometheus exporter-toolkit web config file.

The subset of https://prometheus.io/docs/prometheus/latest/configuration/https/
that an exporter's users expect, in the same YAML:

    tls_server_config:
      cert_file: server.crt      # relative paths are relative to this file
      key_file: server.key
    basic_auth_users:
      alice: $2y$10$...          # bcrypt, e.g. `htpasswd -nBC 10 alice | cut -d: -f2`

Off unless a file is given. Any other key is an error (a setting silently
ignored would be a security surprise). Needs PyYAML and bcrypt, imported only
when a file is loaded. A bcrypt check costs ~50 ms by design, so a credential
that passed once is remembered (by its SHA-256) and later scrapes cost nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TLS_KEYS = ("cert_file", "key_file")
REMEMBERED_CREDENTIALS = 64  # distinct good credentials cached; more clears the cache


class WebConfigError(ValueError):
    """The web config file is unusable; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class WebConfig:
    """What the server needs: an SSL context (or None) and the users' bcrypt hashes (or none)."""

    ssl_context: Optional[ssl.SSLContext] = None
    users: tuple[tuple[str, bytes], ...] = ()  # (user name, bcrypt hash)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


def _imports(path: Path):
    try:
        import bcrypt
        import yaml
    except ImportError as e:
        raise WebConfigError(f"{path}: a web config needs the {e.name} package "
                             "(pip install 'nanogpt-monitor[web-config]')") from None
    return bcrypt, yaml


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check a web config file; WebConfigError (one line) when anything is wrong."""
    path = Path(path)
    _, yaml = _imports(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise WebConfigError(f"cannot read web config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise WebConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(data) - {"tls_server_config", "basic_auth_users"}
    if unknown:
        raise WebConfigError(f"{path}: unsupported key {sorted(unknown)[0]!r} "
                             "(supported: tls_server_config, basic_auth_users)")
    return WebConfig(_ssl_context(path, data.get("tls_server_config")), _users(path, data.get("basic_auth_users")))


def _ssl_context(path: Path, tls: object) -> Optional[ssl.SSLContext]:
    if tls is None:
        return None
    if not isinstance(tls, dict) or set(tls) != set(TLS_KEYS):
        raise WebConfigError(f"{path}: tls_server_config needs exactly cert_file and key_file")
    cert, key = (path.parent / str(tls[k]) for k in TLS_KEYS)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise WebConfigError(f"{path}: cannot load TLS certificate {cert} with key {key} "
                             f"({getattr(e, 'strerror', None) or e})") from None
    return context


def _users(path: Path, users: object) -> tuple[tuple[str, bytes], ...]:
    if users is None:
        return ()
    if not isinstance(users, dict) or not users:
        raise WebConfigError(f"{path}: basic_auth_users must map user names to bcrypt hashes")
    result = []
    for name, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: the password of user {name!r} must be a bcrypt hash ($2y$...)")
        result.append((str(name), hashed.encode()))
    return tuple(result)


class BasicAuth:
    """Checks HTTP Basic credentials against bcrypt hashes, remembering the ones that passed."""

    def __init__(self, users: tuple[tuple[str, bytes], ...]):
        import bcrypt  # present: load_web_config checked it

        self._checkpw = bcrypt.checkpw
        self._users = dict(users)
        self._passed: set[bytes] = set()
        self._lock = threading.Lock()

    def remembered(self, header: Optional[str]) -> bool:
        """True when `header` passed before: no bcrypt check needed (a server answers it at once)."""
        if not header:
            return False
        digest = hashlib.sha256(header.encode()).digest()
        with self._lock:
            return digest in self._passed

    def allows(self, header: Optional[str]) -> bool:
        """True when `header` (the Authorization value) names a user with the right password."""
        if not header or not header.startswith("Basic "):
            return False
        if self.remembered(header):
            return True
        digest = hashlib.sha256(header.encode()).digest()
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None or not self._checkpw(password.encode(), hashed):
            return False
        with self._lock:
            if len(self._passed) >= REMEMBERED_CREDENTIALS:
                self._passed.clear()
            self._passed.add(digest)
        return True
