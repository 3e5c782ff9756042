"""The web's exact, local mirror of its daemon's sessions, app records and session data.

A protected page must know whether a session token is valid.  Asking the
daemon costs a round trip per request; this mirror answers from memory and is
kept exact by the daemon's session feed (``daemon.feed``, followed through
``daemon.client.FeedSubscription``), in the manner of
the Clone pattern: subscribe first, then take a snapshot stamped with the
feed's sequence number, then apply every later update in order.  A gap, a new
daemon incarnation or silence makes the mirror untrusted until the next
snapshot, and an untrusted mirror says "ask the daemon" (``UNKNOWN``), so the
answer is never older than ``stale_after_s``.  One thread owns the SUB socket;
request threads read the dicts and record their own revocations and writes
in them.  Which kinds the feed carries is said by ``daemon.kinds``
(``mirrored``); a kind this mirror does not know is ignored.

Session data (kind ``d``, a web session's packed dict under its sid) is held
by the cache's own rule (``kinds.supersedes``): a destroyed session's
tombstone beats every live copy, else the higher version wins.  Request
threads and the mirror thread both hold versions of it, and a hold is a
compare-and-set, so those holds take one small lock (a tombstone overwritten
by a live copy read just before it would show destroyed data until the
next snapshot); reads take none.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import signal
from typing import Any, Callable

from logonmesh.daemon.clock import StepWatch
from logonmesh.daemon.client import DaemonClient, DaemonError, DaemonUnavailable, FeedMessage, FeedSubscription
from logonmesh.daemon.kinds import SortedKeys, split_record_key, supersedes
from logonmesh.daemon.restart import Restarts
from logonmesh.flask.tally import Tally

log = logging.getLogger(__name__)

UNKNOWN = object()   # the mirror cannot vouch for the answer: ask the daemon
DELETED = object()   # a record's tombstone, held so that an older write cannot bring it back
POLL_MS = 100
PURGE_EVERY_S = 10.0
STEP_SETTLE_S = 1.5  # after our clock stepped: the daemon moves its expiries within its 1 s purge period

HeldData = tuple[int, str, bytes | None, int]  # (hlc, origin, data or None when destroyed, expires_ms)


def held_after(old: HeldData | None, new: HeldData) -> HeldData:
    """What the mirror keeps of a sid's session data after it meets ``new``: the cache's own merge.

    A tombstone beats every live copy, else the higher (hlc, origin) wins; and
    a tombstone keeps the later expiry of its own and each copy it met, as the
    daemon's does, so the mirror forgets it no sooner than the daemon.
    """
    if old is None:
        return new
    if supersedes("d", new[:3], old):
        return new if new[2] is not None else (new[0], new[1], None, max(new[3], old[3]))
    if old[2] is None and new[3] > old[3]:
        return old[0], old[1], None, new[3]
    return old


def _terminate(code: int) -> None:
    """Without a web server's own stop: SIGTERM, the clean way out for any server."""
    os.kill(os.getpid(), signal.SIGTERM)


class HeldRecords:
    """One namespace's records as the mirror holds them: the highest version of each, keys sorted by prefix."""

    def __init__(self) -> None:
        self.versions: dict[str, tuple[int, str, Any]] = {}  # key -> (hlc, origin, value or DELETED)
        self._keys = SortedKeys()

    def hold(self, key: str, version: tuple[int, str, Any]) -> None:
        """Keep the highest version of a record, as the daemon's last-writer-wins does."""
        old = self.versions.get(key)
        if old is None or (old[0], old[1]) < (version[0], version[1]):
            self.versions[key] = version
            self._keys.add(key)

    def starting_with(self, prefix: str) -> list[tuple[str, Any]]:
        """[(key, value)] of the live records whose key starts with prefix, by key."""
        found = ((key, self.versions[key][2]) for key in self._keys.starting_with(prefix))
        return [(key, value) for key, value in found if value is not DELETED]


class SessionMirror:
    def __init__(self, feed_path: str, ipc_path: str, cookie: bytes, client: DaemonClient,
                 stale_after_s: float, step_threshold_ms: int = 500) -> None:
        self.feed_path = feed_path
        self.ipc_path = ipc_path
        self.client = client
        self.stale_after_s = stale_after_s
        self._steps = StepWatch(step_threshold_ms)
        self._settle_until = 0.0     # monotonic time before which the mirror stays untrusted (a clock step)
        self._cookie = cookie
        # token -> (user, uid, expires_ms); user None for a tombstone (a logout)
        self._sessions: dict[str, tuple[str | None, str | None, int]] = {}
        # namespace -> its records, versions kept so a late write cannot undo a newer one
        self._records: dict[str, HeldRecords] = {}
        # sid -> its session data as held_after keeps it; holds (not reads) take the lock
        self._session_data: dict[str, HeldData] = {}
        self._data_lock = threading.Lock()
        self._incarnation = 0
        self._seq = 0
        self._heard = 0.0            # monotonic time of the last in-order message
        self._trusted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # how the process ends when the thread gives up: the web server sets its clean stop here
        self.on_give_up: Callable[[int], None] = _terminate
        # (what was looked up, "hit" or "miss"): a miss is an UNKNOWN, which sends the request to the daemon
        self.lookups = Tally()

    # ---- request threads --------------------------------------------------

    def lookup(self, token: str) -> Any:
        """The session for a token; None when it was revoked or expired; UNKNOWN when only the daemon can say.

        A token the mirror has not seen yet may be one this web created an
        instant ago, so it is UNKNOWN rather than None.
        """
        self._ensure_running()
        found = self._sessions.get(token)
        if found is None or not self.current():
            return self._missed("session")
        self.lookups.add("session", "hit")
        if found[0] is None or found[2] <= time.time() * 1000:
            return None
        return {"user": found[0], "uid": found[1], "expires": found[2]}

    def records(self, namespace: str, prefix: str = "") -> Any:
        """[(key, value)] of a namespace's records whose key starts with prefix, by key; UNKNOWN when only
        the daemon can say (what its ``record_items`` op answers, without the round trip)."""
        self._ensure_running()
        if not self.current():
            return self._missed("record")
        self.lookups.add("record", "hit")
        held = self._records.get(namespace)
        return [] if held is None else held.starting_with(prefix)

    def _missed(self, what: str) -> Any:
        self.lookups.add(what, "miss")
        return UNKNOWN

    def record_written(self, written: dict) -> None:
        """This web just wrote a record (the reply of ``record_put`` or ``record_delete``): show it on the next
        page, before the feed's own message arrives."""
        value = DELETED if written.get("deleted") else written["value"]
        self._hold(written["namespace"], written["key"], (written["hlc"], written["origin"], value))

    def _hold(self, namespace: str, key: str, version: tuple[int, str, Any]) -> None:
        held = self._records.get(namespace)
        if held is None:
            held = self._records[namespace] = HeldRecords()
        held.hold(key, version)

    def session_data(self, sid: str) -> Any:
        """The session's packed data; None when it was destroyed or expired; UNKNOWN when only the daemon can say.

        A sid the mirror has never seen is UNKNOWN, not None: a session just
        written on another node may not have arrived yet.
        """
        self._ensure_running()
        found = self._session_data.get(sid)
        if found is None or not self.current():
            return self._missed("session_data")
        self.lookups.add("session_data", "hit")
        if found[2] is None or found[3] <= time.time() * 1000:
            return None
        return found[2]

    def session_data_written(self, sid: str, reply: dict, data: bytes) -> None:
        """This web just wrote the session's data (``reply`` is what ``session_data_put`` answered): hold it now,
        so the next request here reads it before the feed's own message arrives.  A reply that says the session
        was destroyed holds the tombstone instead."""
        value = None if reply.get("destroyed") else data
        self._hold_data(sid, (reply["hlc"], reply["origin"], value, reply["expires"]))

    def session_data_destroyed(self, sid: str, expires_ms: int) -> None:
        """This web just deleted the session's data (``session_data_delete`` answered this expiry): know it now.

        The reply carries no version, and needs none: a tombstone beats every
        live copy, and the feed's own tombstone, being higher, replaces it.
        """
        self._hold_data(sid, (0, "", None, expires_ms))

    def _hold_data(self, sid: str, version: HeldData) -> None:
        with self._data_lock:
            held = self._session_data
            held[sid] = held_after(held.get(sid), version)

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
        self.on_give_up(1)

    def _follow(self) -> None:
        """One life of the thread: a fresh subscription (so no half-read state survives a failure), then the feed."""
        feed = FeedSubscription(self.feed_path, self._cookie)
        try:
            purged = time.monotonic()
            while not self._stop.is_set():
                message = feed.receive(POLL_MS)
                self._notice_step()
                if message is not None:
                    self._receive(message)
                if time.monotonic() - purged > PURGE_EVERY_S:
                    self._purge()
                    purged = time.monotonic()
        finally:
            feed.close()

    def _notice_step(self) -> None:
        """Our clock stepped: the expiries held here are in its old time, so drop them and snapshot again.

        Not at once: the daemon moves its own expiries on its next purge, so the
        mirror waits that long, untrusted (requests ask the daemon meanwhile).
        """
        step = self._steps.step()
        if step:
            log.warning("the clock stepped by %+d ms: the session mirror snapshots again once the daemon has "
                        "moved its expiries", step)
            self._trusted = False
            self._settle_until = time.monotonic() + STEP_SETTLE_S

    def _receive(self, env: FeedMessage) -> None:
        if time.monotonic() < self._settle_until:
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
            self._apply(env.entries)
        self._seq = env.seq
        self._heard = time.monotonic()

    def _snapshot(self) -> bool:
        try:
            snap = self.client.call("sessions_snapshot", timeout_ms=5000)
        except (DaemonUnavailable, DaemonError) as exc:
            log.warning("session feed: no snapshot (%s); asking the daemon per request meanwhile", exc)
            self._trusted = False
            return False
        self._sessions, self._records = {}, {}
        data: dict[str, HeldData] = {}
        self._apply(snap["entries"], data)
        with self._data_lock:  # a hold in flight lands in the old dict; the feed brings it again
            self._session_data = data
        self._incarnation, self._seq = snap["incarnation"], snap["seq"]
        self._heard = time.monotonic()
        self._trusted = True
        return True

    def _purge(self) -> None:
        """Forget expired sessions and session data (the daemon purges its own without telling the feed).

        Request threads insert into the dicts meanwhile (``revoked``,
        ``session_data_written``), so this walks copies: ``dict.copy()`` runs
        under the GIL in one step, while iterating the live dict raises
        "dictionary changed size during iteration".  A token re-inserted
        between the copy and its pop may be forgotten, which only makes its
        next lookup ask the daemon; session data is dropped only if it is
        still the expired version, under the lock its holds take.
        """
        now = time.time() * 1000
        sessions = self._sessions
        for token, found in sessions.copy().items():
            if found[2] <= now:
                sessions.pop(token, None)
        data = self._session_data
        for sid, held in data.copy().items():
            if held[3] <= now:
                with self._data_lock:
                    if data.get(sid) is held:
                        del data[sid]

    def _apply(self, entries: list, data: dict[str, HeldData] | None = None) -> None:
        """Apply the feed's entries; session data goes into ``data`` (a snapshot's fresh dict, not yet shared)
        or, when None, into the held dict through the lock."""
        sessions = self._sessions
        for kind, key, hlc, origin, value, expires in entries:
            if kind == "s":
                held = sessions.get(key)
                if value is None:
                    sessions[key] = (None, None, expires)
                elif held is None or held[0] is not None:  # a revocation is final: a later touch never undoes it
                    sessions[key] = (value["user"], value["uid"], expires)
            elif kind == "r":
                namespace, own = split_record_key(key)
                self._hold(namespace, own, (hlc, origin, DELETED if value is None else value["v"]))
            elif kind == "d":
                version = (hlc, origin, None if value is None else value["data"], expires)
                if data is None:
                    self._hold_data(key, version)
                else:
                    data[key] = held_after(data.get(key), version)
