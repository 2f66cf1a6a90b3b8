"""/api/stream: Server-Sent Events, one `point` event per logged point and a `status` event per change.

A stream resumes after a cursor (the iteration of the last point the client
holds: Last-Event-ID or ?since=) with no gap and no repeat; without one it
starts with the points logged from now on. It sleeps on the monitor's change
notification between news, sends a comment every `keepalive_seconds` so
proxies keep an idle stream open, and ends when the server closes.

Deliberately not here: parsing the request (exporter.routes), a point's JSON
text (made once per point by exporter.history), the status figures
(exporter.status).
"""

from __future__ import annotations

from typing import Any, Optional

from .views import status_json

SSE_RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects


def serve(handler: Any, cursor: Optional[int]) -> None:
    """Answer the request on `handler` (an exporter.routes.Handler) with an event stream until the
    client goes or the server closes; `cursor` None = from the newest point on."""
    monitor, owner = handler.monitor, handler.owner
    if cursor is None:
        last = monitor.history.last()
        cursor = last.iteration if last is not None else -1
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("X-Accel-Buffering", "no")  # tell reverse proxies not to buffer the stream
    handler.end_headers()
    handler.wfile.write(f"retry: {SSE_RETRY_MILLISECONDS}\n\n".encode())
    sent_status, limiter = None, owner.limiter
    with owner.track_stream():
        while not owner.closing.is_set():
            generation = monitor.generation  # read before the data: a change after it wakes us
            events = []
            with limiter.turn():  # a turn per wake-up with news; an idle stream holds none
                for point in monitor.history.since(cursor):
                    events.append(f"id: {point.iteration}\nevent: point\ndata: {point.json}\n\n")
                    cursor = point.iteration
                if monitor.status_version != sent_status:
                    sent_status = monitor.status_version
                    events.append(f"event: status\ndata: {status_json(monitor).decode()}\n\n")
                data = "".join(events).encode()
            if events:
                with limiter.charged():
                    handler.wfile.write(data)
            if monitor.wait_for_change(generation, owner.keepalive_seconds, owner.closing) == generation:
                if not owner.closing.is_set():
                    handler.wfile.write(b": keepalive\n\n")
