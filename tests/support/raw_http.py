"""Raw HTTP over a socket, for tests that must see the exact bytes a client gets back
(no client library to tidy up a malformed answer)."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

ROUTES = ["/", "/metrics", "/healthz", "/api/status", "/api/history", "/api/model", "/api/stream", "/export.csv",
          "/api/samples"]
MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, dropout=0.0, bias=True)
# any HTTP/d.d: the server echoes the version it was asked in (a 505 to "HTTP/2.0" says HTTP/2.0)
STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([1-5][0-9][0-9]) [^\r\n]*\r\n")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # de-chunked


def _interim_end(raw: bytes) -> int:
    """Where the 1xx interim answers (100 Continue) at the start of `raw` end."""
    offset = 0
    while (match := STATUS_LINE.match(raw, offset)) and match.group(1).startswith(b"1"):
        end = raw.find(b"\r\n\r\n", match.end() - 2)
        if end < 0:
            break
        offset = end + 4
    return offset


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's bytes, and whether its last (zero) chunk arrived."""
    data, offset = b"", 0
    while (line_end := body.find(b"\r\n", offset)) >= 0:
        size = int(body[offset:line_end].split(b";")[0], 16)
        if size == 0:
            return data, True
        data += body[line_end + 2:line_end + 2 + size]
        offset = line_end + 2 + size + 2
    return data, False


def parse_response(raw: bytes, head_request: bool = False) -> Response:
    """A well-formed HTTP answer (1xx interims skipped: status line, headers, a body matching its
    Content-Length or chunking, or for HEAD none at all) or AssertionError."""
    raw = raw[_interim_end(raw):]
    match = STATUS_LINE.match(raw)
    assert match, f"no HTTP status line in {raw[:120]!r}"
    head, separator, body = raw[match.end():].partition(b"\r\n\r\n")
    assert separator or head == b"", f"headers not terminated in {raw[:300]!r}"
    headers = {}
    for line in filter(None, head.split(b"\r\n")):
        name, colon, value = line.partition(b":")
        assert colon and re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name), f"bad header line {line!r}"
        headers[name.decode().lower()] = value.strip().decode("latin-1")
    if head_request:
        assert body == b"", f"a HEAD answer with a body: {body[:120]!r}"
    elif "event-stream" in headers.get("content-type", ""):
        pass  # never ends by itself: the caller read as much as it wanted
    elif headers.get("transfer-encoding") == "chunked":
        body, ended = _dechunk(body)
        assert ended, "a chunked body without its last chunk"
    elif "content-length" in headers:
        assert int(headers["content-length"]) == len(body), f"Content-Length {headers['content-length']} != {len(body)}"
    return Response(int(match.group(1)), headers, body)


def complete(raw: bytes, head_request: bool = False) -> bool:
    """Whether `raw` holds a whole answer (for an event stream: its head), judged by its framing."""
    raw = raw[_interim_end(raw):]
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator or not STATUS_LINE.match(raw):
        return False
    lower = head.lower()
    if head_request or b"text/event-stream" in lower or re.search(rb"^http/\S+ (1|204|304)", lower):
        return True
    if b"\r\ntransfer-encoding: chunked" in lower:
        return _dechunk(body)[1]
    length = re.search(rb"\r\ncontent-length: *([0-9]+)", lower)
    return length is not None and len(body) >= int(length.group(1))  # without one, the end is the close


def exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` and read until the answer is whole (as its framing says), the server closes, or
    `timeout` s pass; b"" when nothing came (a request the server still waits the rest of)."""
    deadline = time.monotonic() + timeout
    head_request = data.startswith(b"HEAD ")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it: read what it said
        raw = b""
        while not complete(raw, head_request) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:  # closed with our bytes unread: what came before stands
                break
            if not chunk:
                break
            raw += chunk
        return raw
