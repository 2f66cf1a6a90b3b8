"""The monitor process's routes called as functions: no socket, no server, no process.

`Routes(node, loop)` is exporter.app's application over a NodeMonitor, and `get(path)` hands it a
request made by aiohttp.test_utils.make_mocked_request, dispatched as aiohttp's server dispatches
one (the router, the middleware every request meets, then the answer prepared and finished), with
the bytes that would go to the socket kept instead. What only a socket shows (framing, limits,
keep-alive, timeouts, streams that never end) is tested over one in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Optional
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from exporter.app import Monitor
from exporter.node import NodeMonitor
from exporter.webconfig import WebConfig
from tests.support.recorded import read_back


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy  # as sent, names case-insensitive
    body: bytes  # as the client reads it (de-chunked)

    def json(self):
        return json.loads(self.body)


class _Kept:
    """The payload writer an answer is written to: it keeps the head and the body."""

    def __init__(self) -> None:
        self.status_line, self.headers, self.body = "", CIMultiDict(), bytearray()
        self.length: Optional[int] = None
        self.buffer_size = self.output_size = 0

    def enable_chunking(self) -> None:  # the framing is the socket's business: the body is kept whole
        pass

    def enable_compression(self, encoding: str = "deflate", strategy=None) -> None:
        raise AssertionError("the monitor compresses bodies itself (gzip), never through aiohttp")

    async def write_headers(self, status_line: str, headers) -> None:
        self.status_line, self.headers = status_line, CIMultiDict(headers)

    def send_headers(self) -> None:
        pass

    async def write(self, data) -> None:
        self.body += data
        self.output_size += len(data)

    async def write_eof(self, data: bytes = b"") -> None:
        await self.write(data)

    async def drain(self) -> None:
        pass


class Routes:
    """exporter.app.Monitor over `node`, asked in-process on `loop` (the unit layer's `loop` fixture)."""

    def __init__(self, node: NodeMonitor, loop: asyncio.AbstractEventLoop, web_config: Optional[WebConfig] = None):
        self.node, self.loop = node, loop
        self.monitor = Monitor(node, web_config=web_config)
        self.app = self.monitor.app()
        self.app.freeze()

    def get(self, path: str, headers: Optional[dict] = None, method: str = "GET", peer: object = None) -> Answer:
        """`peer`: the client's address as the connection's transport reports it (one connection's
        requests share it); by default each request is a connection of its own."""
        return self.loop.run_until_complete(self._answer(method, path, headers or {}, peer))

    def close(self) -> None:
        """Cancel what the monitor scheduled on the loop (the renders ahead of regular scrapers)."""
        self.monitor.scrape_ahead.close()

    def json(self, path: str) -> tuple[int, object]:
        """(status, parsed JSON body) of one GET."""
        answer = self.get(path)
        return answer.status, answer.json()

    async def _answer(self, method: str, path: str, headers: dict, peer: object) -> Answer:
        kept = _Kept()
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            peer if name == "peername" and peer is not None else default)
        request = make_mocked_request(method, path, headers, app=self.app, writer=kept, loop=self.loop,
                                      transport=transport)
        response = await self.app._handle(request)  # what aiohttp's server calls for each parsed request
        await response.prepare(request)  # a streamed answer (CSV) did both already: then these do nothing
        await response.write_eof()
        return Answer(response.status, CIMultiDictProxy(kept.headers), bytes(kept.body))


def routes_of(monitor, loop: asyncio.AbstractEventLoop, web_config: Optional[WebConfig] = None) -> Routes:
    """The routes over a TrainingMonitor's run directory, on the NodeMonitor tests/support/recorded.py
    reads it with (a second NodeMonitor on one directory would remove the first one's files)."""
    return Routes(read_back(monitor).node, loop, web_config=web_config)
