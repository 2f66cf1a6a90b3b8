"""Raw HTTP over a socket, for tests that must see the exact bytes a client gets back
(no client library to tidy up a malformed answer)."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

ROUTES = ["/", "/metrics", "/healthz", "/api/status", "/api/history", "/api/model", "/api/stream", "/export.csv"]
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*\r\n")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def parse_response(raw: bytes, head_request: bool = False) -> Response:
    """A well-formed HTTP/1.x answer (status line, headers, a body matching Content-Length or, for
    HEAD, none at all) or AssertionError."""
    match = STATUS_LINE.match(raw)
    assert match, f"no HTTP status line in {raw[:120]!r}"
    head, separator, body = raw[match.end():].partition(b"\r\n\r\n")
    assert separator or head == b"", f"headers not terminated in {raw[:300]!r}"
    headers = {}
    for line in filter(None, head.split(b"\r\n")):
        name, colon, value = line.partition(b":")
        assert colon and re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name), f"bad header line {line!r}"
        headers[name.decode().lower()] = value.strip().decode("latin-1")
    if head_request and body == b"":
        pass  # Content-Length tells what a GET would have got
    elif "content-length" in headers and "event-stream" not in headers.get("content-type", ""):
        assert int(headers["content-length"]) == len(body), f"Content-Length {headers['content-length']} != {len(body)}"
    return Response(int(match.group(1)), headers, body)


def exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, half-close (so a partial request meets EOF, not a timeout), read the answer to the
    end, or only its head when it is an event stream (which never ends by itself); `timeout` s at most."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it: read what it said
        raw = b""
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            raw += chunk
            head = raw.partition(b"\r\n\r\n")[0]
            if b"\r\n\r\n" in raw and b"text/event-stream" in head:
                break
        return raw
