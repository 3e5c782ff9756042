"""The ``peer_up`` and ``peer_down`` signals: changes in the peers this node's daemon sees up.

The web's feed from its daemon carries entries and ticks, not membership, so
a thread asks the daemon (``ping``, one ipc call) once per heartbeat and
sends a signal for each peer that came up or went down since the last
answer.  It asks only while some receiver is connected, so an app that does
not listen pays nothing; the first answer after that is the baseline and
sends nothing (``mesh.ping()`` gives the current set).  The thread has its own
daemon client: ZeroMQ sockets are not shared between threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from logonmesh.daemon.client import DaemonClient, DaemonError, DaemonUnavailable
from logonmesh.flask.sessions import peer_down, peer_up

log = logging.getLogger(__name__)


class PeerWatch:
    def __init__(self, make_client: Callable[[], DaemonClient], period_s: float) -> None:
        self._make_client = make_client
        self.period_s = period_s
        self.sender: Any = None        # the app (set by init_app): what receivers connect to
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.known: frozenset[str] | None = None  # the peers up at the last answer; None: no baseline yet

    def start(self) -> None:
        """Idempotent and cheap once running: every request may call it."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="logonmesh-peer-watch", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        client: DaemonClient | None = None
        try:
            while not self._stop.wait(self.period_s):
                if not (peer_up.receivers or peer_down.receivers):
                    self.known = None  # nobody listens: ask nothing, and take a fresh baseline later
                    continue
                client = client or self._make_client()
                try:
                    up = frozenset(client.call("ping")["peers_up"])
                except (DaemonUnavailable, DaemonError):
                    continue  # the daemon is away: no news is not "every peer went down"
                if self.known is not None:
                    self._send(up, self.known)
                self.known = up
        except Exception:  # a thread that dies is never silent
            log.exception("the peer watch failed: peer_up and peer_down will not be sent again in this process")
        finally:
            if client is not None:
                client.close()

    def _send(self, up: frozenset[str], known: frozenset[str]) -> None:
        """One signal per change; a receiver that raises is logged, and the watch goes on."""
        changes = [(peer_up, name) for name in sorted(up - known)] + [(peer_down, name) for name in sorted(known - up)]
        for signal, name in changes:
            try:
                signal.send(self.sender, node=name)
            except Exception:
                log.exception("a %s receiver failed", signal.name)
