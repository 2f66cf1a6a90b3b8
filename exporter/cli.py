"""`nanogpt-monitor serve --dir DIR`: one monitor process serving every rank that records into DIR.

Our trainer starts it for you; run it yourself where the trainer runs elsewhere (a Kubernetes
sidecar sharing an emptyDir with a trainer started with --metrics-external). It serves until the
run is over: `--linger` seconds after every trainer recording here (and its --owner) is gone, or
after `--wait` seconds if none ever appears; SIGTERM or SIGINT stop it at once. Once listening it
writes DIR/monitor.json ({"pid", "url", "host", "port"}), which is how a trainer that started it
knows it is up; a failure to start is {"error": ...} there and one line on stderr (left to the
--owner to print when there is one), exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

READY_FILE = "monitor.json"
NICENESS = 10  # below training's priority: the scheduler favours the trainer when both want a core
EXIT_BAD_INPUT = 2
MIN_LINGER_SECONDS = 1.0

log = logging.getLogger("nanogpt_monitor")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nanogpt-monitor", description="Serve a training run's figures.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve /metrics, the live page and the API for a run directory")
    serve.add_argument("--dir", required=True, type=Path, help="the run directory the trainers record into")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on (0: any free port)")
    serve.add_argument("--web-config", type=Path, help="basic auth / TLS, as Prometheus exporters read it")
    serve.add_argument("--linger", type=float, default=0.0,
                       help="seconds to keep serving once every trainer process is gone (default 0)")
    serve.add_argument("--wait", type=float, default=600.0,
                       help="seconds to wait for a first trainer before giving up (default 600)")
    serve.add_argument("--owner", type=int, help="pid of the process that started this monitor: serve while it lives")
    serve.add_argument("--remove-dir", action="store_true", help="delete DIR on exit (the trainer made it)")
    serve.add_argument("--idle-timeout", type=_positive, default=None, metavar="SECONDS",
                       help="close a connection that sent no complete request for this long: a kept-alive "
                            "one between requests, a new one (a trickled head) from its start (default 65)")
    serve.add_argument("--stream-keepalive", type=_positive, default=None, metavar="SECONDS",
                       help="send an idle event stream a comment this often, so proxies keep it (default 15)")
    return parser.parse_args(argv)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text}")
    return port


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # 0 would turn aiohttp's idle timer off: no bound at all
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from .webconfig import WebConfigError, load_web_config

    try:
        args.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # nowhere to say it but here: no ready file can be written either
        print(f"error: cannot use {args.dir} as the run directory: {e.strerror or e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    try:
        web_config = load_web_config(args.web_config) if args.web_config else None
    except WebConfigError as e:
        return _fail(args, str(e))
    return asyncio.run(_serve(args, web_config))


def _fail(args: argparse.Namespace, message: str) -> int:
    """One line on stderr, and in the ready file for the trainer that started us, which reports it
    itself: then the line is not printed twice."""
    try:
        _write_ready(args.dir, {"error": message})
        reported = args.owner is not None
    except OSError:
        reported = False
    if not reported:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def _write_ready(directory: Path, content: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{READY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(content), encoding="utf-8")
    os.replace(tmp, directory / READY_FILE)


async def _serve(args: argparse.Namespace, web_config) -> int:
    from aiohttp import web

    from . import app
    from .node import NodeMonitor, process_alive

    try:
        os.nice(NICENESS)
    except OSError:  # not allowed here: serve at the same priority
        pass
    node = NodeMonitor(args.dir)
    monitor = app.Monitor(node, web_config, app.KEEPALIVE_SECONDS if args.stream_keepalive is None
                          else args.stream_keepalive)
    runner = app.runner(monitor, app.IDLE_SECONDS if args.idle_timeout is None else args.idle_timeout)
    await runner.setup()
    ssl_context = web_config.ssl_context if web_config is not None else None
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context, backlog=128)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        reason = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        return _fail(args, f"cannot serve metrics on {args.host}:{args.port}: {reason}")
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    url = f"{scheme}://{f'[{args.host}]' if ':' in args.host else args.host}:{port}"
    _write_ready(args.dir, {"pid": os.getpid(), "url": url, "host": args.host, "port": port})
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, monitor.closing.set)
    watcher = asyncio.create_task(monitor.watch())
    started, gone_since = time.monotonic(), None
    # nobody is left to end an endless linger; and the end (a killed trainer's "failed") needs a moment
    # to reach the open pages before the server goes
    linger = max(MIN_LINGER_SECONDS, 0.0 if math.isinf(args.linger) else args.linger)
    try:
        while not monitor.closing.is_set():
            owner_alive = args.owner is not None and process_alive(args.owner)
            if owner_alive or node.trainers_alive():
                gone_since = None
            elif node.views or args.owner is not None:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since >= linger:
                    break
            elif time.monotonic() - started >= args.wait:
                log.info("monitor: no trainer recorded into %s within %.0f s; exiting", args.dir, args.wait)
                break
            try:
                await asyncio.wait_for(monitor.closing.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    finally:
        monitor.closing.set()
        await watcher
        await runner.cleanup()
        _clean_up(args.dir, node, args.remove_dir)
    return 0


def _clean_up(directory: Path, node, remove_dir: bool) -> None:
    """Leave nothing behind: our ready file and shared files, and the whole directory if ours."""
    try:
        (directory / READY_FILE).unlink(missing_ok=True)
        node.files.remove()
        if remove_dir:
            shutil.rmtree(directory, ignore_errors=True)
    except OSError as e:
        log.warning("monitor: could not clean up %s: %s", directory, e)


if __name__ == "__main__":
    raise SystemExit(main())
