"""Run a node's web app (the demo, or any Flask app) under waitress until SIGTERM or SIGINT, then exit 0.

honcho stops a Procfile by sending SIGTERM to every process (and SIGKILL 5 s
later), so SIGTERM must end the server promptly and cleanly.  waitress leaves
its loop on SystemExit, drains its threads and returns; the handler raises it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Callable

from flask import Flask
from waitress.server import create_server

from logonmesh.daemon.config import Settings

log = logging.getLogger(__name__)

THREADS = 8
_exit_code = 0  # what the next SIGTERM exits with; stop() raises it for a thread that gave up


def serve(settings: Settings, port: int, build: Callable[[], Flask]) -> None:
    """Build the app, start its session mirror, serve it; a port that cannot be bound is one line and exit 1.

    ``build`` runs after the signal handlers are in place, so that a SIGTERM
    while the app is imported (or its factory runs) also exits 0.
    """
    _stop_on_signals()
    app = build()
    start_mirror(app)
    try:
        server = create_server(app, host=settings.host, port=port, threads=THREADS, ident="logonmesh")
    except OSError as exc:
        print(f"logonmesh: cannot listen on {settings.host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    log.info("web %s serving on http://%s:%d (daemon ipc %s)", settings.name, settings.host, port,
             settings.ipc_path)
    server.run()  # returns on the SystemExit that _leave raises: waitress catches it to drain
    log.info("web %s stopped", settings.name)
    if _exit_code:
        sys.exit(_exit_code)


def start_mirror(app: Flask) -> None:
    """Warm the session mirror before the first request, if the app uses ``logonmesh.flask``.

    Its state is ``app.extensions["logonmesh"]``; a plain Flask app has none and
    needs none.  A mirror that gives up stops this server the clean way, exit 1.
    """
    start = getattr(app.extensions.get("logonmesh"), "start", None)
    if callable(start):
        start(on_give_up=stop)


def _stop_on_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave)


def stop(code: int) -> None:
    """From any thread: leave the way SIGTERM does (waitress drains its threads), then exit with ``code``."""
    global _exit_code
    _exit_code = code
    os.kill(os.getpid(), signal.SIGTERM)


def _leave(signum: int, frame: FrameType | None) -> None:
    """Ignore further signals (honcho may send more) so the shutdown itself is never interrupted."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(_exit_code)
