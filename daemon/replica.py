"""The replica: every decision a node makes, with no socket, no database and no clock of its own.

The daemon's shell (``node.py``) reads a socket, decodes the frame and hands
the ``wire.Envelope`` here; registry rows and the answers of worker jobs
arrive the same way.  The replica updates the cache, the membership and the
repair state and returns a list of effects (``effects.py``): publish this,
send that to that peer, follow this bus, run that job.  The shell executes
them.  So a sequence gap, a digest mismatch or a peer that comes up is
decided here and can be tested from a scripted history of events, the way
memberlist tests its state machine apart from its transport.

Time comes from an injected ``Clock``; the loss filter draws from an injected
``random.Random``.  Nothing here blocks.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from logonmesh.daemon import wire
from logonmesh.daemon.cache import Cache, Item
from logonmesh.daemon.clock import SYSTEM, Clock, StepWatch
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
from logonmesh.daemon.guard import Refusals, ReplayWindow
from logonmesh.daemon.hlc import HLC
from logonmesh.daemon.kinds import Entry
from logonmesh.daemon.membership import Membership, Peer
from logonmesh.daemon.offsets import Offset
from logonmesh.daemon.sync import Repairs
from logonmesh.daemon.trace import Trace
from logonmesh.discovery import NodeRow

log = logging.getLogger(__name__)

MISMATCH_HEARTBEATS = 2   # a digest mismatch must persist this long before it means divergence
STALE_ROW_FACTOR = 10     # a registry row stale for this many down-periods is deleted
REPUBLISH_BATCH = 500     # entries per bus merge when republishing what a repair brought
PING_EVERY_MS = 1000      # how often each up peer is pinged for its clock offset
SKEW_WARN_EVERY_MS = 60_000  # a peer beyond the maximum clock offset is warned about this often while it lasts
REPAIR_TYPES = frozenset({"tree_req", "tree_rep", "diff_req", "diff_rep", "push", "sync_req", "sync_rep"})
ALLOWED = {"bus": wire.BUS_TYPES, "peer socket": wire.PEER_REQUESTS, "peer reply": wire.PEER_REPLIES}


def entry_hlc(entry: Entry) -> int:
    """An entry's version: the one place that knows where it sits in an entry."""
    return entry[2]


class Replica:
    """One node's replicated state and the rules that change it."""

    def __init__(self, name: str, incarnation: int, key: bytes, *, heartbeat_ms: int, down_after_ms: int,
                 max_clock_offset_ms: int = 500, cache: Cache | None = None, clock: Clock = SYSTEM,
                 rng: random.Random | None = None, trace: Trace | None = None) -> None:
        self.name = name
        self.incarnation = incarnation
        self.key = key
        self.heartbeat_ms = heartbeat_ms
        self.down_after_ms = down_after_ms
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.trace = trace
        self.stats: Counter[str] = Counter()
        self.cache = cache if cache is not None else Cache()
        self.max_clock_offset_ms = max_clock_offset_ms
        self.hlc = HLC(lambda: clock.wall_ms() / 1000, max_clock_offset_ms)
        self.refusals = Refusals(self.stats)
        self.replay = ReplayWindow()
        self.membership = Membership(name, down_after_ms, STALE_ROW_FACTOR * down_after_ms)
        self.repairs = Repairs(self.cache, self.stats, timeout_ms=max(1000, 3 * heartbeat_ms), clock=clock)
        self.blocked: set[str] = set()
        self.loss = 0.0
        self.bus_endpoint = ""
        self.peer_endpoint = ""
        self._refreshing = False
        self._polling = False
        self._pinged_at = -float(PING_EVERY_MS)
        self._pings = 0
        self._own_steps = StepWatch(max_clock_offset_ms, clock)

    # ---- boot ------------------------------------------------------------

    def bound(self, bus_endpoint: str, peer_endpoint: str) -> None:
        """The endpoints the shell bound, as others must dial them: they go into every heartbeat and announce."""
        self.bus_endpoint, self.peer_endpoint = bus_endpoint, peer_endpoint

    def load(self, users: Iterable[dict[str, Any]], entries: Iterable[Entry]) -> int:
        """Boot from the store: users in bulk, other durable entries by merge; returns the users taken."""
        count = self.cache.load_users(users)
        self.cache.merge(list(entries), self.clock.wall_ms())
        return count

    # ---- timers and registry jobs ---------------------------------------

    def heartbeat(self) -> list[Effect]:
        """Tell the bus our digest; refresh our registry row unless a refresh is still under way."""
        payload = {"size": len(self.cache), "digest": self.cache.digest.root,
                   "bus": self.bus_endpoint, "peer": self.peer_endpoint}
        effects: list[Effect] = [Publish("hb", payload)]
        if not self._refreshing:
            self._refreshing = True
            effects.append(RefreshRow())
        now = self.clock.mono_ms()
        if now - self._pinged_at >= PING_EVERY_MS:
            self._pinged_at = now
            for peer in self.membership.peers.values():
                if peer.up:
                    effects += self._ping(peer)
        return effects

    def _ping(self, peer: Peer) -> list[Effect]:
        """Ask a peer for its clock: the pong's ``sent_at`` and the round trip give its offset."""
        self._pings += 1
        return self._send(peer, ("ping", {"n": self._pings, "t": float(self.clock.wall_ms())}))

    def refreshed(self, present: bool | None, error: BaseException | None) -> list[Effect]:
        self._refreshing = False
        if error is not None:
            self.stats["registry_errors"] += 1
            log.warning("registry refresh failed: %s", error)
            return []
        if not present:  # pruned or expired (stopped too long, or Redis restarted empty): come back
            return [Rejoin()]
        return []

    def liveness(self) -> list[Effect]:
        """Mark silent peers down; forget the long lost, and let go of their sockets."""
        _, gone = self.membership.expire(self.clock.mono_ms())
        effects: list[Effect] = []
        for peer in gone:
            log.info("forgetting lost peer %s", peer.name)
            if not peer.left:  # a peer that left was let go of when it said goodbye
                effects += [Unfollow(peer.bus_endpoint), CloseDealer(peer.name)]
        return effects

    def poll(self) -> list[Effect]:
        """Read the registry, unless the last read has not come back yet."""
        if self._polling:
            return []
        self._polling = True
        return [PollRegistry()]

    def polled(self, rows: list[NodeRow] | None, error: BaseException | None) -> list[Effect]:
        self._polling = False
        if error is not None:
            self.stats["registry_errors"] += 1
            log.warning("registry poll failed: %s", error)
            return []
        return self.on_rows(rows or [])

    def on_rows(self, rows: list[NodeRow]) -> list[Effect]:
        """Reconcile with the registry: dial new peers, announce to them, adopt the users of the withdrawn."""
        fresh, moved_from, withdrawn = self.membership.sync_rows(rows)
        effects: list[Effect] = [Unfollow(old.bus_endpoint) for old in moved_from]
        for peer in fresh:
            effects += [OpenDealer(peer.name, peer.peer_endpoint), Follow(peer.bus_endpoint)]
            effects += self._send(peer, ("announce", self._announcement()))
        now = self.clock.mono_ms()
        for peer in withdrawn:
            if not peer.left:  # one that said goodbye stays "left"
                self.membership.mark_down(peer, "left the registry", now)
            effects.append(AdoptUsers(peer.name))
        return effects

    def adopted(self, node: str, entries: list[Entry] | None, error: BaseException | None) -> list[Effect]:
        """Take in the users a vanished node stored, and publish whatever was new here.

        A node killed between storing a user and publishing it would otherwise
        leave that user known to the store alone.  Its row leaving the registry
        (withdrawn, pruned or expired) is the sign it is gone for good; a node
        cut off by a partition keeps its row, so a partition still is one.
        """
        if error is not None:
            log.warning("could not read the users %s wrote: %s", node, error)
            return []
        adopted = self.cache.merge(entries or [], self.clock.wall_ms())
        if not adopted:
            return []
        log.warning("adopted %d users that %s stored but never published", len(adopted), node)
        self.stats["users_adopted"] += len(adopted)
        return self._repaired(adopted)

    def purge(self) -> int:
        self._follow_own_step()
        return self.cache.purge(self.clock.wall_ms())

    def _follow_own_step(self) -> None:
        """Our own clock stepped: move every expiry with it (a step back would otherwise lengthen them all)."""
        step = self._own_steps.step()
        if step:
            moved = self.cache.shift_expiries(step)
            self.stats["own_clock_steps"] += 1
            log.warning("this node's clock stepped by %+d ms: %d expiries moved with it", step, moved)

    # ---- receiving -------------------------------------------------------

    def decode(self, frame: bytes) -> wire.Envelope:
        """Verify and unpack a frame signed with the cluster key; raises ``wire.WireError``."""
        return wire.decode(self.key, frame)

    def refuse(self, where: str, reason: str, sender: str | None = None, detail: str = "") -> None:
        """Count (and now and then log) a frame the shell could not even decode."""
        self.refusals.refuse(where, reason, sender, detail)

    def admit(self, env: wire.Envelope, where: str) -> bool:
        """Vet a decoded frame: the right socket, not our own name, not a blocked peer, not a replay."""
        if env.type not in ALLOWED[where]:
            self.refusals.refuse(where, "wrong_socket", env.sender, env.type)
            return False
        if env.sender == self.name:
            # Only a replay carries our own name back to us (every node announces itself to any
            # registry row, so a rogue row collects genuine frames).  Taken, it made the node its
            # own peer, which for one thing doubled its login-failure counts.
            self.refusals.refuse(where, "own_name", env.sender)
            return False
        if env.sender in self.blocked:
            self.stats["drop_partitioned"] += 1
            return False
        if where != "bus" and not self.replay.accept(env.sender, env.incarnation, env.seq):
            self.refusals.refuse(where, "replay", env.sender)
            return False
        return True

    def on_bus(self, env: wire.Envelope) -> list[Effect]:
        """A heartbeat or a merge from the bus."""
        if not self.admit(env, "bus"):
            return []
        if self.loss and self.rng.random() < self.loss:
            self.stats["drop_lossy"] += 1
            return []
        self.stats[f"in_{env.type}"] += 1
        effects: list[Effect] = []
        peer = self.membership.peers.get(env.sender)
        if peer is None:
            if env.type == "merge":  # signed by a member we have not met yet: still worth keeping
                self._merge_from(env.payload["entries"], env)
            if env.type != "hb":
                return effects
            peer, effects = self._learn(env.sender, env.payload["bus"], env.payload["peer"], env.incarnation)
            effects.append(Follow(peer.bus_endpoint))
        reason = self._check_sequence(peer, env)
        if reason == "replay":
            return effects
        now = self.clock.mono_ms()
        if env.type == "bye":
            return effects + self._on_bye(peer, env, now)
        came_up = self.membership.heard(peer, now)
        self._clock_sample(peer, env)
        if env.type == "merge":
            self._merge_from(env.payload["entries"], env)
        elif env.type == "hb":
            peer.beat(now)
            reason = reason or self._check_digest(peer, env.payload["digest"])
        if came_up:
            reason = "peer_up"
            effects += self._ping(peer)
        if reason:
            effects += self.request_repair(peer, reason)
        return effects

    def _on_bye(self, peer: Peer, env: wire.Envelope, now: float) -> list[Effect]:
        """A clean leave (SIGTERM): mark it left at once, and stop dialling its bus and its router.

        A new incarnation of it (a restart) announces itself or heartbeats, and
        is learnt again as a new peer.
        """
        self.membership.mark_left(peer, env.incarnation, now)
        self.stats["peers_left"] += 1
        return [Unfollow(peer.bus_endpoint), CloseDealer(peer.name)]

    def on_peer_request(self, env: wire.Envelope, size: int) -> list[Effect]:
        """A request on our router; a ``Reply`` effect, if any, answers it."""
        if not self.admit(env, "peer socket"):
            return []
        self.count_in(env.type, size)
        p = env.payload
        if env.type == "announce":
            return self._on_announce(env)
        if env.type == "tree_req":
            return [Reply(*self.repairs.answer_tree(p))]
        if env.type == "diff_req":
            return [Reply(*self.repairs.answer_diff(p))]
        if env.type == "push":
            return self._repaired(self.repairs.on_push(self._rebased(p["entries"], env)))
        if env.type == "sync_req":
            return [Reply(*self.repairs.snapshot(p["digest"]))]
        if env.type == "ping":
            return [Reply("pong", {"n": p["n"], "t": p["t"]})]
        return []

    def on_peer_reply(self, name: str, env: wire.Envelope, size: int) -> list[Effect]:
        """A reply on our DEALER to peer ``name``: the next step of a repair we started."""
        if not self.admit(env, "peer reply"):
            return []
        self.count_in(env.type, size)
        peer = self.membership.peers.get(name)
        if peer is None:  # forgotten while its reply was on the way
            return []
        if env.type == "pong":
            self._on_pong(peer, env)
            return []
        if env.type == "tree_rep":
            return self._send(peer, self.repairs.on_tree_rep(peer, env.payload))
        if env.type == "diff_rep":
            payload = dict(env.payload, entries=self._rebased(env.payload["entries"], env))
            changed, push, more = self.repairs.on_diff_rep(peer, payload)
            effects = self._send(peer, push) + self._repaired(changed)
            if more:
                effects += self.request_repair(peer, "more")
            return effects
        return []

    def count_in(self, type_: str, size: int) -> None:
        self.stats[f"in_{type_}"] += 1
        if type_ in REPAIR_TYPES:
            self.stats["repair_bytes_in"] += size
            self.stats["repair_msgs_in"] += 1

    def count_out(self, type_: str, size: int) -> None:
        """The shell sent a direct message: what it cost."""
        self.stats[f"out_{type_}"] += 1
        if type_ in REPAIR_TYPES:
            self.stats["repair_bytes_out"] += size
            self.stats["repair_msgs_out"] += 1

    def count(self, stat: str, n: int = 1) -> None:
        self.stats[stat] += n

    def handshake_failed(self, peer_name: str, event: str, value: int, endpoint: str) -> None:
        """The shell's dealer towards a peer reports a failed ZMTP handshake: count it, explain it once."""
        self.stats["handshake_failures"] += 1
        peer = self.membership.peers.get(peer_name)
        if peer is not None and self.membership.handshake_failed(peer, event, value):
            log.warning("peer %s at %s: %s", peer_name, endpoint, peer.handshake_failure)

    def _on_announce(self, env: wire.Envelope) -> list[Effect]:
        before = self.membership.peers.get(env.sender)
        peer, effects = self._learn(env.sender, env.payload["bus"], env.payload["peer"], env.incarnation)
        if effects:
            log.info("peer %s announced itself", env.sender)
            if before is not None and not before.left and before.bus_endpoint != peer.bus_endpoint:
                effects.append(Unfollow(before.bus_endpoint))  # it restarted: stop dialling its dead PUB
        return effects + [Follow(peer.bus_endpoint), Reply("ack", {})]

    def _learn(self, name: str, bus: str, peer_endpoint: str, incarnation: int) -> tuple[Peer, list[Effect]]:
        """Learn a peer; a new or moved one needs a DEALER to its (new) router."""
        peer, changed = self.membership.learn(name, bus, peer_endpoint, incarnation)
        return peer, [OpenDealer(peer.name, peer.peer_endpoint)] if changed else []

    def _check_sequence(self, peer: Peer, env: wire.Envelope) -> str | None:
        if env.incarnation > peer.bus_incarnation:
            restarted = peer.bus_incarnation != 0
            peer.bus_incarnation, peer.last_seq = env.incarnation, env.seq
            if restarted:  # its clock may have been stepped while it was down: measure again
                peer.clock = Offset()
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

    def _merge_from(self, entries: list[Entry], env: wire.Envelope) -> None:
        entries = self._rebased(entries, env)
        self._observe(entries)
        self.cache.merge(entries, self.clock.wall_ms())
        if self.trace is not None:
            self.trace.on_apply(entries)

    # ---- clocks ----------------------------------------------------------

    def _observe(self, entries: list[Entry]) -> None:
        """Let the hybrid clock follow what we received, except versions beyond the maximum offset ahead."""
        for entry in entries:
            if not self.hlc.observe(entry_hlc(entry)):
                self.stats["versions_ahead_of_clock"] += 1

    def _clock_sample(self, peer: Peer, env: wire.Envelope) -> None:
        """Every bus frame is a one-way sample; one that disagrees by more than the maximum means a step."""
        sample = env.sent_at - self.clock.wall_ms()
        estimate = peer.clock.ms
        if estimate is not None and abs(sample - estimate) > self.max_clock_offset_ms:
            peer.clock = Offset()  # it stepped (or we did): trust the fresh samples until the next pong
        peer.clock.on_frame(env.sent_at, self.clock.wall_ms())
        self._check_skew(peer)

    def _on_pong(self, peer: Peer, env: wire.Envelope) -> None:
        peer.clock.on_pong(env.payload["t"], env.sent_at, self.clock.wall_ms())
        self._check_skew(peer)

    def _check_skew(self, peer: Peer) -> None:
        """Say it loudly when a peer's clock is beyond the maximum offset, and again while it stays there."""
        now = self.clock.mono_ms()
        if not peer.clock.beyond(self.max_clock_offset_ms):
            if peer.skew_warned_at is not None:
                peer.skew_warned_at = None
                log.warning("peer %s's clock is back within %d ms of ours (%+.1f ms)", peer.name,
                            self.max_clock_offset_ms, peer.clock.ms or 0.0)
            return
        if peer.skew_warned_at is not None and now - peer.skew_warned_at < SKEW_WARN_EVERY_MS:
            return
        peer.skew_warned_at = now
        self.stats["clock_offset_warnings"] += 1
        log.warning("peer %s's clock is %+.1f ms from ours, beyond --max-clock-offset-ms %d: one of the two clocks "
                    "is wrong (fix NTP); sessions, logouts and lifetimes still hold, but its versions do not move "
                    "our clock and it wins concurrent writes to one key only while it is ahead", peer.name,
                    peer.clock.ms or 0.0, self.max_clock_offset_ms)

    def _rebased(self, entries: list[Entry], env: wire.Envelope) -> list[Entry]:
        """The entries with their expiries moved from the sender's clock into ours.

        An expiry is the instant the sender's clock reads it; ours reads
        ``offset`` ms less then.  A peer not measured yet is rebased with this
        frame's own one-way sample, wrong only by its transit time.
        """
        peer = self.membership.peers.get(env.sender)
        offset = peer.clock.ms if peer is not None else None
        if offset is None:
            offset = env.sent_at - self.clock.wall_ms()
        shift = round(offset)
        if not shift:
            return entries
        return [e._replace(expires=max(1, e.expires - shift)) if e.expires else e for e in entries]

    # ---- sending ---------------------------------------------------------

    def request_repair(self, peer: Peer, reason: str) -> list[Effect]:
        """Start a repair with peer, unless it is cut off or another repair runs."""
        if peer.name in self.blocked:
            return []
        return self._send(peer, self.repairs.start(peer, reason))

    def _send(self, peer: Peer, message: tuple[str, dict[str, Any]] | None) -> list[Effect]:
        if message is None or peer.name in self.blocked:
            return []
        return [Send(peer.name, *message)]

    def _announcement(self) -> dict[str, Any]:
        return {"bus": self.bus_endpoint, "peer": self.peer_endpoint}

    def _repaired(self, entries: list[Entry]) -> list[Effect]:
        """Entries a repair brought in: tell the rest of the cluster, so they need not repair too."""
        self._observe(entries)
        effects: list[Effect] = []
        for i in range(0, len(entries), REPUBLISH_BATCH):
            effects += self.publish_entries(entries[i:i + REPUBLISH_BATCH])
        return effects

    def publish_entries(self, entries: list[Entry]) -> list[Effect]:
        if not entries:
            return []
        if self.trace is not None:
            self.trace.on_publish(entries)
        return [Publish("merge", {"entries": entries})]

    # ---- what control asks for -----------------------------------------

    def write(self, kind: str, key: str, value: dict[str, Any] | None, expires: int) -> tuple[Entry, list[Effect]]:
        """Stamp a local change, apply it, and say how to publish it."""
        entry = Entry(kind, key, self.stamp(kind, key), self.name, value, expires)
        self.cache.merge([entry], self.clock.wall_ms())
        return entry, self.publish_entries([entry])

    def apply_local(self, entries: list[Entry]) -> list[Effect]:
        """Entries this node made and stored (a user, a record): apply and publish them."""
        self.cache.merge(entries, self.clock.wall_ms())
        return self.publish_entries(entries)

    def stamp(self, kind: str, key: str) -> int:
        """A fresh version for a write to this key: later than any seen here, and than the version it replaces.

        The second part keeps causality on the key when the version it replaces
        came from a clock beyond the maximum offset ahead, which the hybrid
        clock does not follow.
        """
        item = self.cache.get(kind, key)
        return self.hlc.now(after=item[0] if item is not None else 0)

    def now(self) -> int:
        """Wall milliseconds, as expiries are written."""
        return self.clock.wall_ms()

    def lookup(self, kind: str, key: str) -> Item | None:
        return self.cache.get(kind, key)

    def has(self, kind: str, key: str) -> bool:
        return self.cache.has(kind, key)

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        return self.cache.entries(kind)

    def sessions_of(self, username: str) -> list[Entry]:
        return self.cache.sessions_of(username)

    def records(self, namespace: str, prefix: str = "") -> list[Entry]:
        """The live records of a namespace whose keys start with ``prefix``, ordered by key."""
        return self.cache.records(namespace, prefix)

    def user_count(self) -> int:
        return self.cache.counts()["users"]

    def peers_up(self) -> list[str]:
        return self.membership.up_names()

    def members(self) -> int:
        """How many peers are members now: known, and not gone by a clean leave."""
        return sum(1 for peer in self.membership.peers.values() if not peer.left)

    def peer_names(self) -> list[str]:
        """Every peer known, up or not, in the order they were learnt."""
        return list(self.membership.peers)

    def peers_report(self) -> dict[str, Any]:
        """What ``logonmesh peers`` and the web's /cluster page show."""
        root, now, limit = self.cache.digest.root, self.clock.mono_ms(), self.max_clock_offset_ms
        return {"node": self.name, "digest": root.hex(),
                "heartbeat_ms": self.heartbeat_ms, "down_after_ms": self.down_after_ms,
                "max_clock_offset_ms": limit,
                "peers": [p.view(root, now) | p.clock.view(limit)
                          for p in sorted(self.membership.peers.values(), key=lambda p: p.name)]}

    def state(self) -> dict[str, Any]:
        """The replica's part of ``status``."""
        return {"cache": self.cache.counts(), "digest": self.cache.digest.root.hex(),
                "stats": dict(sorted(self.stats.items())), "blocked": sorted(self.blocked), "loss": self.loss,
                "peers_up": self.membership.up_names(), "refused_by_sender": self.refusals.view()}

    def partition(self, names: set[str], replace: bool) -> list[str]:
        """Drop every bus and peer message to and from these peers (the harness's cut)."""
        names = names - {self.name}
        self.blocked = names if replace else self.blocked | names
        now = self.clock.mono_ms()
        for name in names:
            peer = self.membership.peers.get(name)
            if peer is not None:
                self.membership.mark_down(peer, "partitioned", now)
        log.warning("partitioned from %s", ", ".join(sorted(names)) or "nobody")
        return sorted(self.blocked)

    def heal(self) -> None:
        self.blocked.clear()
        self.loss = 0.0
        log.warning("healed: no peer blocked, no loss")

    def set_loss(self, fraction: float) -> None:
        """Drop this fraction of the bus messages we receive (the harness's lossy network)."""
        self.loss = fraction

    def take_trace(self) -> dict[str, Any] | None:
        return None if self.trace is None else self.trace.take()
