"""The web's exact, local mirror of its daemon's sessions (and of the demo page's budget entries).

A protected page must know whether a session token is valid.  Asking the
daemon costs a round trip per request; this mirror answers from memory and is
kept exact by the daemon's session feed (``daemon.feed``), in the manner of
the Clone pattern: subscribe first, then take a snapshot stamped with the
feed's sequence number, then apply every later update in order.  A gap, a new
daemon incarnation or silence makes the mirror untrusted until the next
snapshot, and an untrusted mirror says "ask the daemon" (``UNKNOWN``), so the
answer is never older than ``stale_after_s``.  One thread owns the SUB socket;
request threads read the dict and record their own revocations in it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.client import DaemonClient, DaemonError, DaemonUnavailable
from logonmesh.daemon.restart import Restarts

log = logging.getLogger(__name__)

UNKNOWN = object()   # the mirror cannot vouch for the answer: ask the daemon
POLL_MS = 100
PURGE_EVERY_S = 10.0


class SessionMirror:
    def __init__(self, feed_path: str, ipc_path: str, cookie: bytes, client: DaemonClient,
                 stale_after_s: float) -> None:
        self.feed_path = feed_path
        self.ipc_path = ipc_path
        self.client = client
        self.stale_after_s = stale_after_s
        self._key = wire.wire_key(cookie)
        # token -> (user, uid, expires_ms); user None for a tombstone (a logout)
        self._sessions: dict[str, tuple[str | None, str | None, int]] = {}
        self._budgets: dict[str, dict[str, dict]] = {}  # username -> entry id -> value
        self._incarnation = 0
        self._seq = 0
        self._heard = 0.0            # monotonic time of the last in-order message
        self._trusted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # ---- request threads --------------------------------------------------

    def lookup(self, token: str) -> Any:
        """The session for a token; None when it was revoked or expired; UNKNOWN when only the daemon can say.

        A token the mirror has not seen yet may be one this web created an
        instant ago, so it is UNKNOWN rather than None.
        """
        self._ensure_running()
        found = self._sessions.get(token)
        if found is None or not self.current():
            return UNKNOWN
        if found[0] is None or found[2] <= time.time() * 1000:
            return None
        return {"user": found[0], "uid": found[1], "expires": found[2]}

    def budget(self, username: str) -> Any:
        """A user's budget entries, oldest first, or UNKNOWN when only the daemon can say."""
        self._ensure_running()
        if not self.current():
            return UNKNOWN
        entries = [{"id": key, **value} for key, value in self._budgets.get(username, {}).items()]
        return sorted(entries, key=lambda e: (e["created_at"], e["id"]))

    def budget_added(self, entry: dict) -> None:
        """This web just added the entry: show it on the next page, before the feed's own message."""
        value = {k: entry[k] for k in ("user", "label", "cents", "created_at")}
        self._budgets.setdefault(entry["user"], {})[entry["id"]] = value

    def revoked(self, token: str, expires_ms: int) -> None:
        """This web just revoked the token: know it now, before the feed's own message arrives."""
        self._sessions[token] = (None, None, expires_ms)

    def current(self) -> bool:
        """Trusted, recently heard from, and the daemon's socket still there (a clean stop removes it)."""
        return (self._trusted and time.monotonic() - self._heard < self.stale_after_s
                and os.path.exists(self.ipc_path))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def start(self) -> None:
        """Start following the feed now, so the mirror is warm before the first page (serve() calls it)."""
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="session-mirror", daemon=True)
                    self._thread.start()

    # ---- the mirror's own thread -------------------------------------------

    def _run(self) -> None:
        """Follow the feed until close(); a failure is logged with its cause, then a restart or giving up.

        While the thread is down or restarting the mirror is untrusted, so every
        request asks the daemon: slower, never wrong.  A mirror that fails 5
        times within 60 s (``daemon.restart``) gives up and stops the web with
        one line on stderr, rather than serving on with a dead thread.
        """
        restarts = self.restarts()
        while not self._stop.is_set():
            try:
                self._follow()
                return  # close() asked us to stop
            except Exception as exc:
                self._trusted = False
                delay = restarts.failed()
                if delay is None:
                    self.give_up(f"the session mirror gave up after {restarts.describe()} "
                                 f"(last: {type(exc).__name__}: {exc}); stopping the web", exc)
                    return
                log.error("session mirror failed (%s: %s); restarting in %.2f s (%s)", type(exc).__name__,
                          exc, delay, restarts.describe(), exc_info=exc)
                self._stop.wait(delay)

    def restarts(self) -> Restarts:
        """The restart policy of the mirror's thread (a method, so a test can make it quick)."""
        return Restarts()

    def give_up(self, message: str, exc: Exception) -> None:
        """Stop the web process: one line on stderr, then the clean SIGTERM path with exit code 1."""
        log.critical("%s", message, exc_info=exc)
        print(f"logonmesh: {message}", file=sys.stderr, flush=True)
        from logonmesh.web import serve  # here: serve imports the app, which imports this module
        serve.stop(1)

    def _follow(self) -> None:
        """One life of the thread: a fresh SUB (so no half-read state survives a failure), then the feed."""
        sub = zmq.Context.instance().socket(zmq.SUB)
        try:
            sub.linger = 0
            sub.rcvhwm = 0  # never drop here; the daemon's side is bounded
            sub.subscribe(b"")
            sub.connect(f"ipc://{self.feed_path}")  # zmq reconnects by itself when the daemon restarts
            purged = time.monotonic()
            while not self._stop.is_set():
                if sub.poll(POLL_MS):
                    self._receive(sub.recv())
                if time.monotonic() - purged > PURGE_EVERY_S:
                    self._purge()
                    purged = time.monotonic()
        finally:
            sub.close(linger=0)

    def _receive(self, frame: bytes) -> None:
        try:
            env = wire.decode(self._key, frame)
        except wire.WireError as exc:
            log.warning("session feed: refused a frame (%s)", exc.reason)
            return
        if env.type not in ("sessions", "tick"):
            return
        if not self._trusted or env.incarnation != self._incarnation:
            if not self._snapshot():
                return
        if env.seq <= self._seq:
            return  # already in the snapshot
        if env.seq != self._seq + 1:
            log.info("session feed: gap after %d (got %d), taking a snapshot", self._seq, env.seq)
            self._trusted = False
            self._snapshot()
            return
        if env.type == "sessions":
            self._apply(env.payload["entries"])
        self._seq = env.seq
        self._heard = time.monotonic()

    def _snapshot(self) -> bool:
        try:
            snap = self.client.call("sessions_snapshot", timeout_ms=5000)
        except (DaemonUnavailable, DaemonError) as exc:
            log.warning("session feed: no snapshot (%s); asking the daemon per request meanwhile", exc)
            self._trusted = False
            return False
        self._sessions, self._budgets = {}, {}
        self._apply(snap["entries"])
        self._incarnation, self._seq = snap["incarnation"], snap["seq"]
        self._heard = time.monotonic()
        self._trusted = True
        return True

    def _purge(self) -> None:
        """Forget expired sessions (the daemon purges its own without telling the feed).

        Request threads insert into the dict meanwhile (``revoked``), so this
        walks a copy: ``dict.copy()`` runs under the GIL in one step, while
        iterating the live dict raises "dictionary changed size during
        iteration".  A token re-inserted between the copy and its pop may be
        forgotten, which only makes its next lookup ask the daemon.
        """
        now = time.time() * 1000
        sessions = self._sessions
        for token, found in sessions.copy().items():
            if found[2] <= now:
                sessions.pop(token, None)

    def _apply(self, entries: list) -> None:
        sessions = self._sessions
        for kind, key, _hlc, _origin, value, expires in entries:
            if kind == "b":
                self._apply_budget(key, value)
            elif value is None:
                sessions[key] = (None, None, expires)
            else:
                sessions[key] = (value["user"], value["uid"], expires)

    def _apply_budget(self, key: str, value: dict | None) -> None:
        if value is None:
            for entries in self._budgets.values():
                entries.pop(key, None)
        else:
            self._budgets.setdefault(value["user"], {})[key] = value
