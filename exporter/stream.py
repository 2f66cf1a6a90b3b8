"""/api/stream: Server-Sent Events, one `point` event per logged point and a `status` event per change.

A stream resumes after a cursor (the iteration of the last point the client
holds: Last-Event-ID or ?since=) with no gap and no repeat; without one it
starts with the points logged from now on. It sleeps on the monitor's change
notification between news, sends a comment every `keepalive_seconds` so
proxies keep an idle stream open, and ends when the server closes.

Deliberately not here: parsing the request (exporter.routes), the events'
and the status's bytes (made once per change by exporter.views, shared by all
streams), the status figures (exporter.status).
"""

from __future__ import annotations

from typing import Any, Optional


SSE_RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects


def serve(handler: Any, cursor: Optional[int]) -> None:
    """Answer the request on `handler` (an exporter.routes.Handler) with an event stream until the
    client goes or the server closes; `cursor` None = from the newest point on."""
    monitor, owner = handler.monitor, handler.owner
    if cursor is None:
        last = monitor.history.last()
        cursor = last.iteration if last is not None else -1
    handler.send_response(200)
    handler.send_header("Connection", "close")  # the stream ends when the connection does
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("X-Accel-Buffering", "no")  # tell reverse proxies not to buffer the stream
    handler.end_headers()
    handler.wfile.write(f"retry: {SSE_RETRY_MILLISECONDS}\n\n".encode())
    sent_status, sent_generation, limiter, views = None, None, owner.limiter, owner.views
    with owner.track_stream():
        while not owner.closing.is_set():
            generation = monitor.generation  # read before the data: a change after it wakes us
            if generation != sent_generation:  # news (or the first round): a turn to gather it
                with limiter.turn():
                    data, cursor = views.events_after(cursor)
                    if monitor.status_version != sent_status:
                        sent_status = monitor.status_version
                        data += b"event: status\ndata: " + views.status() + b"\n\n"
                sent_generation = generation
                if data:
                    handler.wfile.write(data)  # charged with the next turn
            if monitor.wait_for_change(generation, owner.keepalive_seconds, owner.closing) == generation:
                if not owner.closing.is_set():
                    handler.wfile.write(b": keepalive\n\n")
                limiter.mark()  # an idle stream's wake-ups and keepalives are upkeep, not request work
