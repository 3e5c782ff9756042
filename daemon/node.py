"""The daemon's shell: one process, one event loop, every socket polled in one place.

Data flows one way: a socket is read, the frame decoded and handed to the
replica (``replica.py``), which decides and returns effects; this module
executes them (publish, send, follow, open a dealer, run a worker job) and
nothing else.  Blocking work (the database) goes to the worker thread; sends
never block.  The loop wakes for sockets, for signals (through a wakeup fd)
and for its timers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import zmq
from zmq.auth.thread import ThreadAuthenticator
from logonmesh.daemon import wire
from logonmesh.daemon.bus import Bus, advertised
from logonmesh.daemon.cache import PERSISTED_KINDS, expand_users, user_entry
from logonmesh.daemon.clock import SYSTEM
from logonmesh.daemon.config import WILDCARDS, Settings, ensure_run_dir, resolve_cookie
from logonmesh.daemon.control import Control
from logonmesh.daemon.curve import Curve
from logonmesh.daemon.dealers import Dealers
from logonmesh.daemon.effects import (
    AdoptUsers,
    CloseDealer,
    Effect,
    Follow,
    OpenDealer,
    PollRegistry,
    Publish,
    RefreshRow,
    Rejoin,
    Reply,
    Send,
    Unfollow,
)
from logonmesh.daemon.feed import SessionFeed
from logonmesh.daemon.kinds import KINDS, Entry, record_entry
from logonmesh.daemon.monitor import MonitorFeed, open_feed
from logonmesh.daemon.replica import STALE_ROW_FACTOR, Replica
from logonmesh.daemon.trace import Trace
from logonmesh.daemon.worker import Worker
from logonmesh.discovery import Backend, NodeRow, StoredSession, is_networked, open_backend

log = logging.getLogger(__name__)

SAVE_SESSIONS_MS = 200        # the write-behind period: what a crash of every node at once may lose
PURGE_STORE_MS = 60_000       # how often the store's expired sessions are deleted

T = TypeVar("T")


def drain(recv: Callable[[int], T], limit: int) -> Iterator[T]:
    """What a socket holds now, up to ``limit`` messages and never waiting.

    The bound gives the loop's timers and other sockets their turn under a flood.
    """
    for _ in range(limit):
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def _incarnation_path(settings: Settings) -> str:
    return os.path.join(settings.run_dir, f"{settings.require_name()}.incarnation")


def last_incarnation(settings: Settings) -> int:
    """The incarnation this node last ran with here (0 if none): a new one must be larger, whatever the clock says."""
    try:
        with open(_incarnation_path(settings), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def save_incarnation(settings: Settings, incarnation: int) -> None:
    """Written under the lock, before any frame goes out, and atomically, so a crash leaves the old or the new."""
    path = _incarnation_path(settings)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{incarnation}\n")
    os.replace(tmp, path)


class StartupError(Exception):
    """The daemon cannot start; the message is one line for a person."""


def _bound(thing: T | None, what: str) -> T:
    """A socket of the shell, which exists from _bind until close."""
    if thing is None:
        raise RuntimeError(f"the daemon's {what} is not bound (not started, or closed)")
    return thing


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.require_name()
        self.cookie = resolve_cookie(settings)
        self.incarnation = wire.new_incarnation(after=last_incarnation(settings))
        self.started_mono = SYSTEM.mono_ms()
        self.started_at = time.time()
        self.bus_codec = wire.Codec(self.cookie, self.name, self.incarnation)
        self.direct_codec = wire.Codec(self.cookie, self.name, self.incarnation)
        self.key = wire.wire_key(self.cookie)
        self.replica = Replica(self.name, self.incarnation, self.key, heartbeat_ms=settings.heartbeat_ms,
                               down_after_ms=settings.down_after_ms, max_clock_offset_ms=settings.max_clock_offset_ms,
                               trace=Trace() if settings.trace else None)
        self.cache = self.replica.cache  # the shell reads it to feed the web, to rejoin and to save sessions
        self.persisting = not settings.ephemeral_sessions
        if self.persisting:
            self.cache.persist(PERSISTED_KINDS)
        self._saving: list[Entry] | None = None  # the batch the worker is writing, if any
        self._save_failing = False
        self.curve = Curve.from_cookie(self.cookie, settings.curve)
        self.auth: ThreadAuthenticator | None = None
        self._stopping = False
        self._timers: dict[str, float] = {}
        self._lock_fd: int | None = None
        self.ctx: zmq.Context = zmq.Context.instance()
        # None until _bind opens them, and again if a failed start closes what it opened;
        # the loop and its handlers run only in between, and reach them through the properties below.
        self._ipc: zmq.Socket | None = None
        self._router: zmq.Socket | None = None
        self._bus: Bus | None = None
        self._dealers: Dealers | None = None
        self._feed: SessionFeed | None = None
        self.monitor: MonitorFeed | None = None  # stays None when its socket cannot be bound (logged)

    # ---- the sockets, once bound ----------------------------------------

    @property
    def ipc(self) -> zmq.Socket:
        return _bound(self._ipc, "ipc")

    @property
    def router(self) -> zmq.Socket:
        return _bound(self._router, "router")

    @property
    def bus(self) -> Bus:
        return _bound(self._bus, "bus")

    @property
    def dealers(self) -> Dealers:
        return _bound(self._dealers, "dealers")

    @property
    def feed(self) -> SessionFeed:
        return _bound(self._feed, "feed")

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Take the name, load users, bind, announce.  A failure leaves no socket file behind."""
        s = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop while booting still leaves cleanly
            signal.signal(sig, lambda *_: setattr(self, "_stopping", True))
        ensure_run_dir(s)
        self._take_lock()
        save_incarnation(s, self.incarnation)
        try:
            res = self._resources()
            try:
                records = [record_entry(r) for r in res.store.load_records()]
                sessions = self._stored_sessions(res)
                self.replica.load(res.store.load(), records + sessions)
                self.cache.take_unsaved()  # what was just loaded is in the store already
                self._bind()
                res.registry.announce(self._row())
                boot_effects = self.replica.on_rows(res.registry.peers())
            finally:
                res.close()
        except BaseException:
            self._unbind()
            raise
        self.worker = Worker(self.ctx, self._resources)
        self.control = Control(self, self.replica)
        self.execute(boot_effects)
        log.info("node %s up: bus %s, peer %s, ipc %s, %d users, %d stored session entries", self.name,
                 self.bus.endpoint, self.peer_endpoint, s.ipc_path, self.replica.user_count(), len(sessions))

    def _stored_sessions(self, res: Backend) -> list[Entry]:
        """Boot: the unexpired sessions, session data and endings the store kept, each checked like a frame."""
        if not self.persisting:
            return []
        entries, bad = [], 0
        for row in res.store.load_sessions(SYSTEM.wall_ms()):
            try:
                entry = wire.check_entry(list(row))
            except wire.WireError:
                entry = None
            if entry is None or entry.kind not in PERSISTED_KINDS:
                bad += 1
                continue
            entries.append(entry)
        if bad:
            log.warning("ignored %d malformed stored session rows", bad)
        return entries

    def _bind(self) -> None:
        s = self.settings
        self.ctx.setsockopt(zmq.MAXMSGSIZE, s.max_msg_bytes)  # every socket made from here on
        self.auth = self.curve.authenticator(self.ctx)
        self._ipc = ipc = self.ctx.socket(zmq.ROUTER)
        ipc.linger = 0
        if os.path.exists(s.ipc_path):
            os.unlink(s.ipc_path)  # stale: the lock proves no live daemon owns it
        mask = os.umask(0o177)  # the socket file is born 0600, with no window of wider access
        try:
            ipc.bind(f"ipc://{s.ipc_path}")
        finally:
            os.umask(mask)
        self._bus = Bus(self.ctx, s.bind, self.curve, port=s.bus_port, advertise=s.advertised_host)
        self._router = router = self.ctx.socket(zmq.ROUTER)
        router.linger = 0
        self.curve.server(router)
        router.bind(f"tcp://{s.bind}:{s.peer_port}")
        self.peer_endpoint = advertised(router.last_endpoint.decode(), s.advertised_host)
        if s.bind in WILDCARDS and not s.advertise:
            log.warning("--bind %s without --advertise: announcing %s, which other hosts cannot reach",
                        s.bind, s.advertised_host)
        self.replica.bound(self.bus.endpoint, self.peer_endpoint)
        self._dealers = Dealers(self.ctx, self.curve)
        self._feed = SessionFeed(self.ctx, s.feed_path,
                                wire.Codec(self.cookie, self.name, self.incarnation))
        self.monitor = open_feed(self.ctx, s.run_dir, wire.Codec(self.cookie, self.name, self.incarnation),
                                 {"bus-pub": self.bus.pub, "bus-sub": self.bus.sub, "peer-router": self.router})

    def _unbind(self) -> None:
        if self.monitor is not None:  # first: its monitors must be disabled before their sockets close
            self.monitor.close()
            self.monitor = None
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self._dealers is not None:
            self._dealers.close_all()
        if self._bus is not None:
            self._bus.close()
        for sock in (self._router, self._ipc):
            if sock is not None:
                sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if os.path.exists(self.settings.ipc_path):
            os.unlink(self.settings.ipc_path)
        if self._lock_fd is not None:
            os.unlink(os.path.join(self.settings.run_dir, f"{self.name}.lock"))
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> None:
        """A second daemon with this name and run dir must refuse, not steal the socket file."""
        path = os.path.join(self.settings.run_dir, f"{self.name}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"a daemon named {self.name} is already running "
                               f"(ipc socket {self.settings.ipc_path})") from None
        self._lock_fd = fd

    def _resources(self) -> Backend:
        """Connections for one thread; a Redis row lives as long as the stale limit unless refreshed."""
        return open_backend(self.settings.db, STALE_ROW_FACTOR * self.settings.down_after_ms)

    def _row(self) -> NodeRow:
        now = time.time()
        return NodeRow(self.name, self.bus.endpoint, self.peer_endpoint, socket.gethostname(), os.getpid(),
                       self.incarnation, self.started_at, now)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then leave the cluster cleanly."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        signal.set_wakeup_fd(wfd)
        poller = zmq.Poller()
        handlers: dict = {
            self.bus.sub: self._on_bus, self.router: self._on_peer_request,
            self.ipc: self._on_ipc, self.worker.wake: lambda: self.worker.drain(), rfd: lambda: None,
        }
        for sock in handlers:
            poller.register(sock, zmq.POLLIN)
        if self.monitor is not None:
            self.monitor.attach(poller, handlers)
        dealers: dict[zmq.Socket, str] = {}
        try:
            while not self._stopping:
                dealers = self._sync_dealers(poller, dealers)
                timeout = self._run_timers()
                for sock, _ in poller.poll(timeout):
                    self._dispatch(handlers, dealers, sock)
                    if self._stopping:
                        break
        finally:
            signal.set_wakeup_fd(-1)
            os.close(rfd)
            os.close(wfd)
            self.close()
            for sig in (signal.SIGTERM, signal.SIGINT):  # the interpreter resets our handler to the default
                signal.signal(sig, signal.SIG_IGN)       # as it exits: a repeated signal would kill us (-15)

    def _dispatch(self, handlers: dict, dealers: dict[zmq.Socket, str], sock: Any) -> None:
        """Run one socket's handler; a bug there is logged and counted, and the node keeps serving."""
        try:
            if sock in handlers:
                handlers[sock]()
            elif sock in dealers and self.dealers.is_monitor(sock):
                for failure in self.dealers.failures(sock):
                    self.replica.handshake_failed(dealers[sock], *failure)
            elif sock in dealers:
                self._on_peer_reply(dealers[sock], sock)
        except Exception:
            self.replica.count("internal_errors")
            log.exception("handler failed; the daemon keeps serving")
        self.flush_feed()

    def flush_feed(self) -> None:
        """Whatever the last handler changed in the mirrored kinds goes to the web's mirror, in one message."""
        changes = self.cache.feed_changes
        if changes:
            self.cache.feed_changes = []
            self.feed.publish(changes)

    def close(self) -> None:
        log.info("node %s leaving the cluster", self.name)
        self._publish("bye", {})  # first: the peers mark us "left" at once and stop dialling us
        try:
            res = self._resources()
            res.registry.withdraw(self.name, self.incarnation)
            res.close()
        except Exception as exc:  # leaving must not fail; the row will expire anyway
            log.warning("could not withdraw the registry row: %s", exc)
        self.worker.close()
        self._save_remaining()
        self._unbind()
        self.ctx.term()

    def _sync_dealers(self, poller: zmq.Poller, current: dict[zmq.Socket, str]) -> dict[zmq.Socket, str]:
        wanted = self.dealers.sockets()
        for sock in current.keys() - wanted.keys():
            try:
                poller.unregister(sock)
            except KeyError:
                pass
        for sock in wanted.keys() - current.keys():
            poller.register(sock, zmq.POLLIN)
        return wanted

    # ---- timers ---------------------------------------------------------

    def _run_timers(self) -> int:
        """Run what is due; return the poll timeout in ms until the next timer."""
        s = self.settings
        now = SYSTEM.mono_ms()
        r = self.replica
        schedule: list[tuple[str, float, Callable[[], object]]] = [
            ("heartbeat", s.heartbeat_ms, self._heartbeat),
            ("liveness", min(s.heartbeat_ms, 250), lambda: self.execute(r.liveness())),
            ("discovery", s.discovery_ms, lambda: self.execute(r.poll())),
            ("purge", 1000, lambda: r.purge()),
        ]
        if self.persisting:
            schedule += [("save_sessions", SAVE_SESSIONS_MS, self._save_sessions),
                         ("purge_store", PURGE_STORE_MS, self._purge_store)]
        wait = float(s.heartbeat_ms)
        for name, period, fn in schedule:
            due = self._timers.get(name, 0.0)
            if now >= due:
                fn()
                due = now + period
                self._timers[name] = due
            wait = min(wait, due - now)
        return max(0, int(wait))

    def _heartbeat(self) -> None:
        self.execute(self.replica.heartbeat())
        self.feed.tick()

    # ---- sessions, written behind ---------------------------------------

    def _save_sessions(self) -> None:
        """Hand what changed in the sessions since the last batch to the worker, one batch at a time.

        A login's answer never waits for this (write-behind): while a batch is
        being written the changes gather, one row per key, for the next.
        """
        if self._saving is not None:
            return
        batch = self.cache.take_unsaved()
        if not batch:
            return
        self._saving = batch
        rows = [StoredSession(*entry) for entry in batch]
        self.worker.submit(lambda res: res.store.save_sessions(rows),
                           lambda _, error: self._saved(batch, error))

    def _saved(self, batch: list[Entry], error: BaseException | None) -> None:
        self._saving = None
        if error is None:
            self.replica.count("sessions_saved", len(batch))
            self.replica.count("session_batches")
            if self._save_failing:
                self._save_failing = False
                log.warning("sessions are being saved again")
            return
        self.cache.unsaved(batch)  # the next batch carries them again
        self.replica.count("session_save_errors")
        if not self._save_failing:
            self._save_failing = True
            log.warning("could not save sessions (retrying every %d ms): %s", SAVE_SESSIONS_MS, error)

    def _purge_store(self) -> None:
        now = SYSTEM.wall_ms()

        def done(purged: int | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("could not delete expired sessions from the store: %s", error)
            elif purged:
                self.replica.count("sessions_purged_from_store", purged)
        self.worker.submit(lambda res: res.store.purge_sessions(now), done)

    def _save_remaining(self) -> None:
        """At a clean stop, after the loop and the worker ended: the last changes, and the batch in flight.

        The batch in flight may have been written already; writing it again is
        harmless (the store keeps the winner of each key).
        """
        if not self.persisting:
            return
        batch = (self._saving or []) + self.cache.take_unsaved()
        if not batch:
            return
        try:
            res = self._resources()
            try:
                res.store.save_sessions([StoredSession(*entry) for entry in batch])
            finally:
                res.close()
            log.info("saved the last %d session entries", len(batch))
        except Exception as exc:  # leaving must not fail
            log.warning("could not save the last %d session entries: %s", len(batch), exc)

    # ---- executing effects ----------------------------------------------

    def execute(self, effects: Iterable[Effect], ident: bytes | None = None) -> None:
        """Do what the replica decided; ``ident`` is the router peer that a ``Reply`` answers."""
        for fx in effects:
            if isinstance(fx, Publish):
                self._publish(fx.type, fx.payload)
            elif isinstance(fx, Send):
                self._send_peer(fx.peer, fx.type, fx.payload)
            elif isinstance(fx, Reply):
                self._reply_peer(ident, fx.type, fx.payload)
            elif isinstance(fx, Follow):
                self.bus.follow(fx.endpoint)
            elif isinstance(fx, Unfollow):
                self.bus.unfollow(fx.endpoint)
            elif isinstance(fx, OpenDealer):
                self.dealers.open(fx.peer, fx.endpoint)
            elif isinstance(fx, CloseDealer):
                self.dealers.close(fx.peer)
            else:
                self._job(fx)

    def _job(self, fx: Effect) -> None:
        """Effects that are worker jobs: the answer goes back to the replica on the loop."""
        r = self.replica
        if isinstance(fx, RefreshRow):
            beat = time.time()
            self.worker.submit(lambda res: res.registry.refresh(self.name, self.incarnation, beat),
                               lambda present, error: self.execute(r.refreshed(present, error)))
        elif isinstance(fx, PollRegistry):
            self._poll_registry()
        elif isinstance(fx, Rejoin):
            self._rejoin()
        elif isinstance(fx, AdoptUsers):
            node = fx.node
            # the rows become entries on the worker: a vanished node may have written many users
            self.worker.submit(lambda res: [user_entry(u) for u in res.store.written_by(node)],
                               lambda users, error: self.execute(r.adopted(node, users, error)))
        else:
            raise TypeError(f"unknown effect {fx!r}")

    def _poll_registry(self) -> None:
        stale_after_s = STALE_ROW_FACTOR * self.settings.down_after_ms / 1000

        def job(res: Backend) -> list[NodeRow]:
            pruned = res.registry.prune(stale_after_s)
            if pruned:
                log.info("pruned stale registry rows: %s", ", ".join(pruned))
            return res.registry.peers()

        self.worker.submit(job, lambda rows, error: self.execute(self.replica.polled(rows, error)))

    def _rejoin(self) -> None:
        """Announce again, and give the store back the users it may have lost.

        A Redis without persistence comes back empty after a restart: the
        cache still holds every user, and a node that boots later would
        otherwise load none of them.  Existing usernames win, so this is safe
        to run from every node at once.
        """
        row = self._row()
        # only a networked store can forget; a SQLite file's missing row just means it was pruned.
        # The loop only copies the table (C speed); the worker rebuilds the records.
        stored = self.cache.stored_users() if is_networked(self.settings.db) else []

        def job(res: Backend) -> int:
            res.registry.announce(row)
            return res.store.restore(expand_users(stored))

        def done(restored: int | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("could not announce again: %s", error)
            elif restored:
                log.warning("restored %d users the store had lost", restored)
        self.worker.submit(job, done)

    def _publish(self, type_: str, payload: dict) -> None:
        if self.bus.publish(self.bus_codec.encode(type_, payload)):
            self.replica.count(f"out_{type_}")
        else:
            self.replica.count("drop_send_hwm")

    def _send_peer(self, name: str, type_: str, payload: dict) -> None:
        frame = self.direct_codec.encode(type_, payload)
        if self.dealers.send(name, frame):
            self.replica.count_out(type_, len(frame))
        else:
            self.replica.count("drop_peer_unreachable")

    def _reply_peer(self, ident: bytes | None, type_: str, payload: dict) -> None:
        if ident is None:
            raise ValueError(f"a {type_} reply with no request to answer")
        frame = self.direct_codec.encode(type_, payload)
        try:
            self.router.send_multipart([ident, frame], zmq.NOBLOCK)
            self.replica.count_out(type_, len(frame))
        except zmq.Again:
            self.replica.count("drop_peer_unreachable")

    # ---- receiving ------------------------------------------------------

    def _decode(self, frame: bytes, where: str) -> wire.Envelope | None:
        try:
            return wire.decode(self.key, frame)
        except wire.WireError as exc:
            self.replica.refuse(where, exc.reason, detail=str(exc))
            return None

    def _on_bus(self) -> None:
        for frame in drain(self.bus.sub.recv, 1000):
            env = self._decode(frame, "bus")
            if env is not None:
                self.execute(self.replica.on_bus(env))

    def _on_peer_request(self) -> None:
        for ident, *frames in drain(self.router.recv_multipart, 100):
            if len(frames) != 1:
                self.replica.refuse("peer socket", "malformed", detail=f"{len(frames)} frames")
                continue
            env = self._decode(frames[0], "peer socket")
            if env is not None:
                self.execute(self.replica.on_peer_request(env, len(frames[0])), ident)

    def _on_peer_reply(self, name: str, dealer: zmq.Socket) -> None:
        for frame in drain(dealer.recv, 100):
            env = self._decode(frame, "peer reply")
            if env is not None:
                self.execute(self.replica.on_peer_reply(name, env, len(frame)))

    def _on_ipc(self) -> None:
        for ident, *frames in drain(self.ipc.recv_multipart, 100):
            self.control.handle(ident, frames)

    # ---- what control asks of the shell ---------------------------------

    def reply_ipc(self, ident: bytes, req_id: int, result: Any = None, error: str | None = None,
                  code: str | None = None) -> None:
        """An error reply carries a stable code (wire.ERROR_CODES) beside its message."""
        frame = self.direct_codec.encode("rep", {"id": req_id, "ok": error is None, "result": result,
                                                 "error": error, "code": (code or "internal") if error else None})
        try:
            self.ipc.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.Again:
            self.replica.count("drop_ipc_unreachable")

    def submit(self, job: Callable[[Backend], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        """Run a store job on the worker thread; ``done`` runs on the loop."""
        self.worker.submit(job, done)

    def write(self, kind: str, key: str, value: dict | None, expires: int) -> Entry:
        """Stamp a local change, apply it and publish it."""
        entry, effects = self.replica.write(kind, key, value, expires)
        self.execute(effects)
        return entry

    def apply_local(self, entries: list[Entry]) -> None:
        """Apply and publish entries this node made and stored."""
        self.execute(self.replica.apply_local(entries))

    def feed_snapshot(self) -> dict:
        """Every entry of the mirrored kinds (sessions, records), stamped with the feed's sequence number."""
        self.flush_feed()  # so the stamp covers everything in the snapshot
        entries = [entry for code, kind in KINDS.items() if kind.mirrored for entry in self.replica.entries(code)]
        return {"seq": self.feed.seq, "incarnation": self.feed.codec.incarnation, "entries": entries}

    def status(self) -> dict:
        """The replica's state, and which process this is, its timings, and who watches its sockets."""
        state = self.replica.state()
        s = self.settings
        return {"node": self.name, "incarnation": self.incarnation, "uptime_s": round(self.uptime_s(), 3),
                "wall_ms": SYSTEM.wall_ms(), "max_clock_offset_ms": s.max_clock_offset_ms,
                "bus": self.bus.endpoint, "peer": self.peer_endpoint, "cache": state["cache"],
                "digest": state["digest"], "seq": self.bus_codec.seq, "stats": state["stats"],
                "blocked": state["blocked"], "loss": state["loss"], "peers_up": state["peers_up"],
                "refused_by_sender": state["refused_by_sender"],
                "pid": os.getpid(), "started_at": self.started_at, "heartbeat_ms": s.heartbeat_ms,
                "down_after_ms": s.down_after_ms,
                "monitor": self.monitor.view() if self.monitor is not None else None}

    def uptime_s(self) -> float:
        return (SYSTEM.mono_ms() - self.started_mono) / 1000
