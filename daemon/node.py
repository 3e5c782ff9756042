"""The daemon: one process, one event loop, every socket polled in one place.

Data flows one way: a socket is read, the frame decoded and checked, applied to
the cache, and whatever changed is published.  Blocking work (the database)
goes to the worker thread; sends never block.  The loop wakes for sockets,
for signals (through a wakeup fd) and for its timers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import socket
import time
from collections import Counter
from typing import Callable, Iterator, TypeVar

import zmq

from logonmesh.daemon import wire
from logonmesh.daemon.bus import Bus, advertised
from logonmesh.daemon.cache import Cache, expand_users, now_ms, user_entry
from logonmesh.daemon.kinds import Entry, record_entry
from logonmesh.daemon.control import Control
from logonmesh.daemon.curve import Curve
from logonmesh.daemon.guard import Refusals, ReplayWindow
from logonmesh.daemon.config import WILDCARDS, Settings, ensure_run_dir, resolve_cookie
from logonmesh.daemon.hlc import HLC
from logonmesh.daemon.membership import Membership, Peer, monotonic_ms
from logonmesh.daemon.feed import SessionFeed, feed_path
from logonmesh.daemon.monitor import MonitorFeed, open_feed
from logonmesh.daemon.sync import Repairs
from logonmesh.daemon.trace import Trace
from logonmesh.daemon.worker import Worker
from logonmesh.discovery import Backend, NodeRow, is_networked, open_backend

log = logging.getLogger(__name__)

MISMATCH_HEARTBEATS = 2   # a digest mismatch must persist this long before it means divergence
STALE_ROW_FACTOR = 10     # a registry row stale for this many down-periods is deleted
REPUBLISH_BATCH = 500     # entries per bus merge when republishing what a repair brought
REPAIR_TYPES = frozenset({"tree_req", "tree_rep", "diff_req", "diff_rep", "push", "sync_req", "sync_rep"})


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


class StartupError(Exception):
    """The daemon cannot start; the message is one line for a person."""


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.require_name()
        self.cookie = resolve_cookie(settings)
        self.incarnation = wire.new_incarnation()
        self.started_mono = monotonic_ms()
        self.started_at = time.time()
        self.stats: Counter = Counter()
        self.cache = Cache()
        self.hlc = HLC()
        self.bus_codec = wire.Codec(self.cookie, self.name, self.incarnation)
        self.direct_codec = wire.Codec(self.cookie, self.name, self.incarnation)
        self.key = wire.wire_key(self.cookie)
        self.curve = Curve.from_cookie(self.cookie, settings.curve)
        self.auth = None
        self.blocked: set[str] = set()
        self.refusals = Refusals(self.stats)
        self.replay = ReplayWindow()
        self.loss = 0.0
        self._stopping = False
        self._refreshing = False
        self._polling = False
        self._timers: dict[str, float] = {}
        self._lock_fd: int | None = None
        self.ctx = zmq.Context.instance()
        self.ipc: zmq.Socket | None = None
        self.router: zmq.Socket | None = None
        self.bus: Bus | None = None
        self.membership: Membership | None = None
        self.monitor: MonitorFeed | None = None
        self.feed: SessionFeed | None = None
        self.trace: Trace | None = Trace() if settings.trace else None

    # ---- start and stop -------------------------------------------------

    def start(self) -> None:
        """Take the name, load users, bind, announce.  A failure leaves no socket file behind."""
        s = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a stop while booting still leaves cleanly
            signal.signal(sig, lambda *_: setattr(self, "_stopping", True))
        ensure_run_dir(s)
        self._take_lock()
        try:
            res = self._resources()
            try:
                self.cache.load_users(res.store.load())
                self.cache.merge([record_entry(r) for r in res.store.load_records()])
                self._bind()
                res.registry.announce(self._row())
                self._on_rows(res.registry.peers())
            finally:
                res.close()
        except BaseException:
            self._unbind()
            raise
        self.worker = Worker(self.ctx, self._resources)
        self.control = Control(self)
        log.info("node %s up: bus %s, peer %s, ipc %s, %d users", self.name, self.bus.endpoint,
                 self.peer_endpoint, s.ipc_path, self.cache.counts()["users"])

    def _bind(self) -> None:
        s = self.settings
        self.ctx.setsockopt(zmq.MAXMSGSIZE, s.max_msg_bytes)  # every socket made from here on
        self.auth = self.curve.authenticator(self.ctx)
        self.ipc = self.ctx.socket(zmq.ROUTER)
        self.ipc.linger = 0
        if os.path.exists(s.ipc_path):
            os.unlink(s.ipc_path)  # stale: the lock proves no live daemon owns it
        mask = os.umask(0o177)  # the socket file is born 0600, with no window of wider access
        try:
            self.ipc.bind(f"ipc://{s.ipc_path}")
        finally:
            os.umask(mask)
        self.bus = Bus(self.ctx, s.bind, self.curve, port=s.bus_port, advertise=s.advertised_host)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.curve.server(self.router)
        self.router.bind(f"tcp://{s.bind}:{s.peer_port}")
        self.peer_endpoint = advertised(self.router.last_endpoint.decode(), s.advertised_host)
        if s.bind in WILDCARDS and not s.advertise:
            log.warning("--bind %s without --advertise: announcing %s, which other hosts cannot reach",
                        s.bind, s.advertised_host)
        self.membership = Membership(self.name, self.ctx, self.curve, s.down_after_ms,
                                     STALE_ROW_FACTOR * s.down_after_ms)
        self.repairs = Repairs(self.cache, self.stats, timeout_ms=max(1000, 3 * s.heartbeat_ms))
        self.feed = SessionFeed(self.ctx, feed_path(s.run_dir, self.name),
                                wire.Codec(self.cookie, self.name, self.incarnation))
        self.monitor = open_feed(self.ctx, s.run_dir, wire.Codec(self.cookie, self.name, self.incarnation),
                                 {"bus-pub": self.bus.pub, "bus-sub": self.bus.sub, "peer-router": self.router})

    def _unbind(self) -> None:
        if self.monitor is not None:  # first: its monitors must be disabled before their sockets close
            self.monitor.close()
            self.monitor = None
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        if self.membership is not None:
            for peer in self.membership.peers.values():
                peer.close()
        if self.bus is not None:
            self.bus.close()
        for sock in (self.router, self.ipc):
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
        dealers: dict[zmq.Socket, Peer] = {}
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

    def _dispatch(self, handlers: dict, dealers: dict, sock) -> None:
        """Run one socket's handler; a bug there is logged and counted, and the node keeps serving."""
        try:
            if sock in handlers:
                handlers[sock]()
            elif sock in dealers:
                self._on_peer_reply(dealers[sock])
        except Exception:
            self.stats["internal_errors"] += 1
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
        try:
            res = self._resources()
            res.registry.withdraw(self.name, self.incarnation)
            res.close()
        except Exception as exc:  # leaving must not fail; the row will expire anyway
            log.warning("could not withdraw the registry row: %s", exc)
        self.worker.close()
        self._unbind()
        self.ctx.term()

    def _sync_dealers(self, poller: zmq.Poller, current: dict) -> dict:
        wanted = {p.dealer: p for p in self.membership.peers.values() if p.dealer is not None}
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
        now = monotonic_ms()
        schedule: list[tuple[str, float, Callable[[], None]]] = [
            ("heartbeat", s.heartbeat_ms, self._heartbeat),
            ("liveness", min(s.heartbeat_ms, 250), self._liveness),
            ("discovery", s.discovery_ms, self._poll_registry),
            ("purge", 1000, lambda: self.cache.purge()),
        ]
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
        payload = {"size": len(self.cache), "digest": self.cache.digest.root,
                   "bus": self.bus.endpoint, "peer": self.peer_endpoint}
        self._publish("hb", payload)
        self.feed.tick()
        if not self._refreshing:
            self._refreshing = True
            beat = time.time()
            self.worker.submit(lambda res: res.registry.refresh(self.name, self.incarnation, beat),
                               self._on_refreshed)

    def _on_refreshed(self, present: bool | None, error: BaseException | None) -> None:
        self._refreshing = False
        if error is not None:
            self.stats["registry_errors"] += 1
            log.warning("registry refresh failed: %s", error)
        elif not present:  # pruned or expired (stopped too long, or Redis restarted empty): come back
            self._rejoin()

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

    def _liveness(self) -> None:
        down, gone = self.membership.expire()
        for peer in gone:
            log.info("forgetting lost peer %s", peer.name)
            self.bus.unfollow(peer.bus_endpoint)
            peer.close()

    def _poll_registry(self) -> None:
        if self._polling:
            return
        self._polling = True
        stale_before = time.time() - STALE_ROW_FACTOR * self.settings.down_after_ms / 1000

        def job(res: Backend) -> list[NodeRow]:
            pruned = res.registry.prune(stale_before)
            if pruned:
                log.info("pruned stale registry rows: %s", ", ".join(pruned))
            return res.registry.peers()

        self.worker.submit(job, self._on_polled)

    def _on_polled(self, rows: list[NodeRow] | None, error: BaseException | None) -> None:
        self._polling = False
        if error is not None:
            self.stats["registry_errors"] += 1
            log.warning("registry poll failed: %s", error)
            return
        self._on_rows(rows or [])

    def _on_rows(self, rows: list[NodeRow]) -> None:
        fresh, moved_from, withdrawn = self.membership.sync_rows(rows)
        for old in moved_from:
            self.bus.unfollow(old.bus_endpoint)
        for peer in fresh:
            self.bus.follow(peer.bus_endpoint)
            self._send_peer(peer, ("announce", {"bus": self.bus.endpoint, "peer": self.peer_endpoint}))
        for peer in withdrawn:
            self.membership.mark_down(peer, "left the registry")
            if peer.lost_at is None:
                peer.lost_at = monotonic_ms()
            self._adopt(peer.name)

    def _adopt(self, name: str) -> None:
        """Take in, from the store, every user a node wrote, once that node has left the registry.

        A node killed between storing a user and publishing it would otherwise
        leave that user known to the store alone.  Its row leaving the registry
        (withdrawn, pruned or expired) is the sign it is gone for good; a node
        cut off by a partition keeps its row, so a partition still is one.
        Whatever is new here is published, so every peer has it too.
        """
        def job(res: Backend) -> list[list]:
            return [user_entry(u) for u in res.store.written_by(name)]

        def done(entries: list[list] | None, error: BaseException | None) -> None:
            if error is not None:
                log.warning("could not read the users %s wrote: %s", name, error)
                return
            adopted = self.cache.merge(entries or [])
            if adopted:
                log.warning("adopted %d users that %s stored but never published", len(adopted), name)
                self.stats["users_adopted"] += len(adopted)
                self._repaired(adopted)
        self.worker.submit(job, done)

    # ---- sending --------------------------------------------------------

    def _publish(self, type_: str, payload: dict) -> None:
        if self.bus.publish(self.bus_codec.encode(type_, payload)):
            self.stats[f"out_{type_}"] += 1
        else:
            self.stats["drop_send_hwm"] += 1

    def publish_entries(self, entries: list[list]) -> None:
        if entries:
            if self.trace is not None:
                self.trace.on_publish(entries)
            self._publish("merge", {"entries": entries})

    def _send_peer(self, peer: Peer, message: tuple[str, dict] | None) -> None:
        if message is None or peer.name in self.blocked:
            return
        frame = self.direct_codec.encode(*message)
        if peer.send(frame):
            self._count_out(message[0], frame)
        else:
            self.stats["drop_peer_unreachable"] += 1

    def _count_out(self, type_: str, frame: bytes) -> None:
        self.stats[f"out_{type_}"] += 1
        if type_ in REPAIR_TYPES:
            self.stats["repair_bytes_out"] += len(frame)
            self.stats["repair_msgs_out"] += 1

    def _count_in(self, type_: str, frame: bytes) -> None:
        self.stats[f"in_{type_}"] += 1
        if type_ in REPAIR_TYPES:
            self.stats["repair_bytes_in"] += len(frame)
            self.stats["repair_msgs_in"] += 1

    def request_repair(self, peer: Peer, reason: str) -> None:
        if peer.name not in self.blocked:
            self._send_peer(peer, self.repairs.start(peer, reason))

    def _repaired(self, entries: list[list]) -> None:
        """Entries a repair brought in: tell the rest of the cluster, so they need not repair too."""
        for entry in entries:
            self.hlc.observe(entry[2])
        for i in range(0, len(entries), REPUBLISH_BATCH):
            self.publish_entries(entries[i:i + REPUBLISH_BATCH])

    # ---- receiving ------------------------------------------------------

    def _receive(self, frame: bytes, where: str, allowed: frozenset[str]) -> wire.Envelope | None:
        """Decode and vet one frame; refuse (count, log now and then) anything out of place."""
        try:
            env = wire.decode(self.key, frame)
        except wire.WireError as exc:
            self.refusals.refuse(where, exc.reason, detail=str(exc))
            return None
        if env.type not in allowed:
            self.refusals.refuse(where, "wrong_socket", env.sender, env.type)
            return None
        if env.sender == self.name:
            # Only a replay carries our own name back to us (every node announces itself to any
            # registry row, so a rogue row collects genuine frames).  Taken, it made the node its
            # own peer, which for one thing doubled its login-failure counts.
            self.refusals.refuse(where, "own_name", env.sender)
            return None
        if env.sender in self.blocked:
            self.stats["drop_partitioned"] += 1
            return None
        if where != "bus" and not self.replay.accept(env.sender, env.incarnation, env.seq):
            self.refusals.refuse(where, "replay", env.sender)
            return None
        return env

    def _on_bus(self) -> None:
        for frame in drain(self.bus.sub.recv, 1000):
            env = self._receive(frame, "bus", wire.BUS_TYPES)
            if env is None or env.sender == self.name:
                continue
            if self.loss and random.random() < self.loss:
                self.stats["drop_lossy"] += 1
                continue
            self.stats[f"in_{env.type}"] += 1
            self._apply_bus(env)

    def _apply_bus(self, env: wire.Envelope) -> None:
        peer = self.membership.peers.get(env.sender)
        if peer is None:
            if env.type == "merge":  # signed by a member we have not met yet: still worth keeping
                self._merge_from(env.payload["entries"])
            if env.type != "hb":
                return
            peer, _ = self.membership.learn(env.sender, env.payload["bus"], env.payload["peer"],
                                            env.incarnation)
            self.bus.follow(peer.bus_endpoint)
        reason = self._check_sequence(peer, env)
        if reason == "replay":
            return
        came_up = self.membership.heard(peer)
        if env.type == "merge":
            self._merge_from(env.payload["entries"])
        elif env.type == "hb":
            peer.beat()
            reason = reason or self._check_digest(peer, env.payload["digest"])
        if came_up:
            reason = "peer_up"
        if reason:
            self.request_repair(peer, reason)

    def _merge_from(self, entries: list[list]) -> None:
        for entry in entries:
            self.hlc.observe(entry[2])
        self.cache.merge(entries)
        if self.trace is not None:
            self.trace.on_apply(entries)

    def _check_sequence(self, peer: Peer, env: wire.Envelope) -> str | None:
        if env.incarnation > peer.bus_incarnation:
            restarted = peer.bus_incarnation != 0
            peer.bus_incarnation, peer.last_seq = env.incarnation, env.seq
            return "peer_restart" if restarted else None
        if env.incarnation < peer.bus_incarnation or env.seq <= peer.last_seq:
            self.refusals.refuse("bus", "replay", env.sender)
            return "replay"
        gap = env.seq > peer.last_seq + 1
        peer.last_seq = env.seq
        if gap:
            self.stats["seq_gaps"] += 1
            return "seq_gap"
        return None

    def _check_digest(self, peer: Peer, digest: bytes) -> str | None:
        peer.digest = digest
        if digest == self.cache.digest.root:
            peer.mismatches = 0
            return None
        peer.mismatches += 1
        return "digest_mismatch" if peer.mismatches >= MISMATCH_HEARTBEATS else None

    def _on_peer_request(self) -> None:
        for ident, *frames in drain(self.router.recv_multipart, 100):
            if len(frames) != 1:
                self.refusals.refuse("peer socket", "malformed", detail=f"{len(frames)} frames")
                continue
            env = self._receive(frames[0], "peer socket", wire.PEER_REQUESTS)
            if env is None:
                continue
            self._count_in(env.type, frames[0])
            reply = self._answer_peer(env)
            if reply is not None:
                frame = self.direct_codec.encode(*reply)
                try:
                    self.router.send_multipart([ident, frame], zmq.NOBLOCK)
                    self._count_out(reply[0], frame)
                except zmq.Again:
                    self.stats["drop_peer_unreachable"] += 1

    def _answer_peer(self, env: wire.Envelope) -> tuple[str, dict] | None:
        p = env.payload
        if env.type == "announce":
            before = self.membership.peers.get(env.sender)
            peer, changed = self.membership.learn(env.sender, p["bus"], p["peer"], env.incarnation)
            if changed:
                log.info("peer %s announced itself", env.sender)
                if before is not None and before.bus_endpoint != peer.bus_endpoint:
                    self.bus.unfollow(before.bus_endpoint)  # it restarted: stop dialling its dead PUB
            self.bus.follow(peer.bus_endpoint)
            return "ack", {}
        if env.type == "tree_req":
            return self.repairs.answer_tree(p)
        if env.type == "diff_req":
            return self.repairs.answer_diff(p)
        if env.type == "push":
            self._repaired(self.repairs.on_push(p["entries"]))
            return None
        if env.type == "sync_req":
            return self.repairs.snapshot(p["digest"])
        if env.type == "ping":
            return "pong", {"n": p["n"], "t": p["t"]}
        return None

    def _on_peer_reply(self, peer: Peer) -> None:
        if peer.dealer is None:
            return
        for frame in drain(peer.dealer.recv, 100):
            env = self._receive(frame, "peer reply", wire.PEER_REPLIES)
            if env is None:
                continue
            self._count_in(env.type, frame)
            if env.type == "tree_rep":
                self._send_peer(peer, self.repairs.on_tree_rep(peer, env.payload))
            elif env.type == "diff_rep":
                changed, push, more = self.repairs.on_diff_rep(peer, env.payload)
                self._send_peer(peer, push)
                self._repaired(changed)
                if more:
                    self.request_repair(peer, "more")

    def _on_ipc(self) -> None:
        for ident, *frames in drain(self.ipc.recv_multipart, 100):
            self.control.handle(ident, frames)

    # ---- helpers for control -------------------------------------------

    def reply_ipc(self, ident: bytes, req_id: int, result=None, error: str | None = None,
                  code: str | None = None) -> None:
        """An error reply carries a stable code (wire.ERROR_CODES) beside its message."""
        frame = self.direct_codec.encode("rep", {"id": req_id, "ok": error is None, "result": result,
                                                 "error": error, "code": (code or "internal") if error else None})
        try:
            self.ipc.send_multipart([ident, frame], zmq.NOBLOCK)
        except zmq.Again:
            self.stats["drop_ipc_unreachable"] += 1

    def write(self, kind: str, key: str, value: dict | None, expires: int) -> Entry:
        """Stamp a local change, apply it and publish it."""
        entry = Entry(kind, key, self.hlc.now(), self.name, value, expires)
        self.cache.merge([entry])
        self.publish_entries([entry])
        return entry

    def uptime_s(self) -> float:
        return (monotonic_ms() - self.started_mono) / 1000

    def now(self) -> int:
        return now_ms()
