"""The local control protocol: what the web process and the CLI may ask a daemon over ipc.

Each request is a signed ``req`` envelope ``{id, op, args}``; each answer a
``rep`` envelope ``{id, ok, result, error, code}``.  A frame that fails to
decode, an unknown op or bad arguments get an error reply, never a crash.
Every error reply carries a stable ``code`` (``wire.ERROR_CODES``) beside its
message, so clients switch on the code and the message can be reworded.
Handlers run on the event loop, so they only touch memory; the ops that write
to the database (registration, records) hand their write to the worker thread
(session data is not durable: its ops never touch the store).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from logonmesh.daemon import wire
from logonmesh.daemon.cache import created_text, user_entry
from logonmesh.daemon.kinds import (
    KINDS,
    SESSION_DATA,
    TOMBSTONE_GRACE_MS,
    Entry,
    device_problem,
    session_id,
    record_key,
    record_problem,
    session_data_problem,
    split_record_key,
    stored_record,
)

if TYPE_CHECKING:
    from logonmesh.daemon.node import Daemon
    from logonmesh.daemon.replica import Replica

log = logging.getLogger(__name__)

Reply = Callable[..., None]
STORE_DOWN = "the user store is unavailable"
SESSION_DATA_TTL_MAX_S = 10 * 365 * 86400  # ten years: longer is a mistake, not a lifetime

# op -> {arg: type}; every arg is required and no other is accepted.
OPS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ping": {},
    "register": {"username": str, "password_hash": str},
    "user": {"username": str},
    "session_create": {"username": str, "device": str},
    "session_resolve": {"token": str},
    "session_revoke": {"token": str},
    "session_touch": {"token": str},
    "sessions_of": {"username": str},
    "session_revoke_id": {"username": str, "id": str},
    "session_revoke_all": {"username": str, "keep": (str, type(None))},
    "sessions_snapshot": {},
    "record_put": {"namespace": str, "key": str, "value": object},
    "record_get": {"namespace": str, "key": str},
    "record_delete": {"namespace": str, "key": str},
    "record_items": {"namespace": str, "prefix": str},
    "session_data_put": {"sid": str, "data": bytes, "ttl_s": int},
    "session_data_get": {"sid": str},
    "session_data_delete": {"sid": str},
    "status": {},
    "metrics": {},
    "peers": {},
    "cache": {"user": (str, type(None)), "sessions": bool, "limit": int},
    "partition": {"peers": list, "replace": bool},
    "heal": {},
    "lossy": {"fraction": float},
    "trace": {},
    "failures_add": {"subjects": list, "window_s": int},
    "failures_count": {"subjects": list},
    "failures_reset": {"subjects": list},
}


class Control:
    """The ipc ops: state questions go to the replica, anything that sends or stores to the daemon's shell."""

    def __init__(self, daemon: "Daemon", replica: "Replica") -> None:
        self.d = daemon
        self.r = replica

    def handle(self, ident: bytes, frames: list[bytes]) -> None:
        d, r = self.d, self.r
        if len(frames) != 1:
            return self._bad(ident, 0, "malformed", "expected one frame")
        try:
            env = r.decode(frames[0])
        except wire.WireError as exc:
            return self._bad(ident, 0, exc.reason, str(exc))
        if env.type != "req":
            return self._bad(ident, 0, "wrong_socket", f"type {env.type} is not a request")
        req_id, op, args = env.payload["id"], env.payload["op"], env.payload["args"]
        problem = check_args(op, args)
        if problem:
            return self._bad(ident, req_id, "bad_args", problem, code="bad_args" if op in OPS else "unknown_op")
        r.count(f"ipc_{op}")

        def reply(result: Any = None, error: str | None = None, code: str | None = None) -> None:
            """Every error names its code (wire.ERROR_CODES); one that forgot is answered as "internal"."""
            d.reply_ipc(ident, req_id, result, error, code if error is not None else None)

        try:
            getattr(self, f"op_{op}")(reply, **args)
        except Exception:  # a bug in one handler must not take the node down
            r.count("ipc_errors")
            log.exception("ipc op %s failed", op)
            reply(error="internal error (logged by the daemon)", code="internal")

    def _bad(self, ident: bytes, req_id: int, reason: str, detail: str, code: str = "bad_request") -> None:
        """A request we cannot serve gets an error reply, a count, and now and then a log line."""
        self.r.count("ipc_bad_request")
        self.r.refuse("ipc socket", reason, detail=detail)
        self.d.reply_ipc(ident, req_id, error=f"bad request: {detail}", code=code)

    # ---- users ----------------------------------------------------------

    def op_ping(self, reply: Reply) -> None:
        reply({"node": self.r.name, "peers_up": self.r.peers_up()})

    def op_register(self, reply: Reply, username: str, password_hash: str) -> None:
        d, r = self.d, self.r
        if not 0 < len(username) <= 256:  # what wire.check_entry lets a key be: peers refuse the rest
            return reply(error="a username is 1 to 256 characters", code="invalid")
        if r.has("u", username):
            return reply(error="taken", code="taken")
        user = {"id": uuid.uuid4().hex, "username": username, "password_hash": password_hash,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}

        def inserted(_: None, error: BaseException | None) -> None:
            from logonmesh.discovery import UsernameTaken
            if isinstance(error, UsernameTaken):
                return reply(error="taken", code="taken")
            if error is not None:
                r.count("store_errors")
                log.warning("registering %r failed: %s", username, error)
                return reply(error=STORE_DOWN, code="store_unavailable")
            d.apply_local([user_entry(user)])
            reply({"id": user["id"], "username": username, "created_at": user["created_at"]})

        d.submit(lambda res: res.store.insert(user, r.name), inserted)

    def op_user(self, reply: Reply, username: str) -> None:
        item = self.r.lookup("u", username)
        reply(item[2] if item else None)

    # ---- sessions -------------------------------------------------------

    def op_session_create(self, reply: Reply, username: str, device: str) -> None:
        """A new token, and what its owner will see of it: this node, now, and the web's device description."""
        d, r = self.d, self.r
        problem = device_problem(device)
        if problem:
            return reply(error=problem, code="invalid")
        item = r.lookup("u", username)
        if item is None:
            return reply(error="no such user", code="no_such_user")
        token = secrets.token_urlsafe(32)  # 256 bits
        now = r.now()
        expires = now + d.settings.session_ttl_s * 1000
        d.write("s", token, {"uid": item[2]["id"], "user": username, "node": r.name, "created_at": created_text(now),
                             "last_seen": created_text(now), "device": device}, expires)
        reply({"token": token, "expires": expires, "id": session_id(token)})

    def op_session_resolve(self, reply: Reply, token: str) -> None:
        item = self.r.lookup("s", token)
        if item is None or item[2] is None or item[3] <= self.r.now():
            return reply(None)
        reply({"user": item[2]["user"], "uid": item[2]["uid"], "expires": item[3]})

    def op_session_revoke(self, reply: Reply, token: str) -> None:
        """Replace the session with a tombstone that outlives every copy of the session, by the grace.

        A token this node has not heard of yet (made elsewhere during a
        partition) gets a full lifetime from now: the session began before this
        logout, so it ends before the tombstone does.
        """
        if not 0 < len(token) <= 256:  # no session has such a key, and peers would refuse its tombstone
            return reply(error="a token is 1 to 256 characters", code="invalid")
        reply({"expires": self._revoke(token)})

    def _revoke(self, token: str) -> int:
        """Write the token's tombstone; returns its expiry."""
        item = self.r.lookup("s", token)
        ends = item[3] if item else self.r.now() + self.d.settings.session_ttl_s * 1000
        expires = ends + TOMBSTONE_GRACE_MS
        self.d.write("s", token, None, expires)
        return expires

    def op_session_touch(self, reply: Reply, token: str) -> None:
        """The web saw the session in use: a new version with ``last_seen`` now, same expiry, published.

        Answers None for a session that is not live here (revoked, expired,
        unknown): a touch never writes anything but a live session's own copy.
        """
        r = self.r
        item = r.lookup("s", token) if 0 < len(token) <= 256 else None
        if item is None or item[2] is None or item[3] <= r.now():
            return reply(None)
        last_seen = created_text(r.now())
        self.d.write("s", token, {**item[2], "last_seen": last_seen}, item[3])
        reply({"last_seen": last_seen})

    def op_sessions_of(self, reply: Reply, username: str) -> None:
        """The user's live sessions, oldest first, each under its public id (never the token)."""
        reply([_session_view(entry) for entry in self._live_sessions(username)])

    def op_session_revoke_id(self, reply: Reply, username: str, id: str) -> None:
        """End the user's session with this public id, on every node; ``revoked`` is 0 when there is none."""
        tokens = [e.key for e in self._live_sessions(username) if session_id(e.key) == id]
        for token in tokens:
            self._revoke(token)
        reply({"revoked": len(tokens), "ids": [session_id(token) for token in tokens]})

    def op_session_revoke_all(self, reply: Reply, username: str, keep: str | None) -> None:
        """End every session of the user on every node, but the one whose public id is ``keep``, if given."""
        tokens = [e.key for e in self._live_sessions(username) if session_id(e.key) != keep]
        for token in tokens:
            self._revoke(token)
        reply({"revoked": len(tokens), "ids": [session_id(token) for token in tokens]})

    def _live_sessions(self, username: str) -> list[Entry]:
        now = self.r.now()
        live = [e for e in self.r.sessions_of(username) if e.value is not None and e.expires > now]
        return sorted(live, key=lambda e: (e.value["created_at"], e.key))

    def op_sessions_snapshot(self, reply: Reply) -> None:
        """Every entry of the mirrored kinds (sessions, records), stamped with the feed's sequence number."""
        reply(self.d.feed_snapshot())

    # ---- records: an app's small values under a namespace and a key --------------

    def op_record_put(self, reply: Reply, namespace: str, key: str, value: Any) -> None:
        """Store the record durably (worker thread), then apply and publish it like any merge."""
        problem = record_problem(namespace, key, value)
        if problem:
            return reply(error=problem[1], code=problem[0])
        self._write_record(reply, namespace, key, {"v": value})

    def op_record_delete(self, reply: Reply, namespace: str, key: str) -> None:
        """A tombstone, durable like a value, so a restart or a repair cannot bring the record back."""
        problem = record_problem(namespace, key)
        if problem:
            return reply(error=problem[1], code=problem[0])
        self._write_record(reply, namespace, key, None)

    def _write_record(self, reply: Reply, namespace: str, key: str, value: dict | None) -> None:
        d, r = self.d, self.r
        entry_key = record_key(namespace, key)
        entry = Entry("r", entry_key, r.stamp("r", entry_key), r.name, value, 0)

        def stored(_: None, error: BaseException | None) -> None:
            if error is not None:
                r.count("store_errors")
                log.warning("storing record %s failed: %s", entry.key[:80], error)
                return reply(error=STORE_DOWN, code="store_unavailable")
            d.apply_local([entry])
            reply(_record_view(entry))

        d.submit(lambda res: res.store.save_record(stored_record(entry)), stored)

    def op_record_get(self, reply: Reply, namespace: str, key: str) -> None:
        """The record, or None when there is none (or it was deleted)."""
        item = self.r.lookup("r", record_key(namespace, key))
        reply(None if item is None or item[2] is None else _record_view(Entry("r", record_key(namespace, key), *item)))

    def op_record_items(self, reply: Reply, namespace: str, prefix: str) -> None:
        """The live records of a namespace whose key starts with prefix, ordered by key."""
        problem = record_problem(namespace, "x")
        if problem:
            return reply(error=problem[1], code=problem[0])
        items = [_record_view(e) for e in self.r.records(namespace, prefix) if e.value is not None]
        reply({"namespace": namespace, "items": items})

    # ---- session data: a web session's whole dict, opaque here, under its session id ----------
    #
    # Not durable, so these handlers only touch memory.  A destroyed session is a
    # tombstone that beats every live copy (``kinds.supersedes``), like a logout.

    def op_session_data_put(self, reply: Reply, sid: str, data: bytes, ttl_s: int) -> None:
        """Replace the session's data (whole-session last-writer-wins), alive for ttl_s from now.

        The write never shortens the lifetime of the version it replaces: a
        purge must equal never having had the expired copy, or a repair could
        bring the older one back (to end a session sooner, delete it).  A
        session destroyed here stays destroyed: nothing is written, and the
        reply says so (``destroyed``) with the tombstone's version and expiry.
        """
        d, r = self.d, self.r
        problem = _sid_problem(sid)
        if problem is None and not 1 <= ttl_s <= SESSION_DATA_TTL_MAX_S:
            problem = f"ttl_s is 1 to {SESSION_DATA_TTL_MAX_S} seconds"
        if problem:
            return reply(error=problem, code="invalid")
        too_large = session_data_problem(data)
        if too_large:
            return reply(error=too_large, code="too_large")
        item = r.lookup("d", sid)
        if item is not None and item[2] is None:
            r.count("session_data_put_destroyed")
            return reply({"sid": sid, "hlc": item[0], "origin": item[1], "expires": item[3], "destroyed": True})
        expires = max(r.now() + ttl_s * 1000, item[3] if item is not None else 0)
        entry = d.write("d", sid, {"data": data}, expires)
        reply({"sid": sid, "hlc": entry.hlc, "origin": entry.origin, "expires": expires, "destroyed": False})

    def op_session_data_get(self, reply: Reply, sid: str) -> None:
        """The session's data and version, or None when it is unknown here, destroyed or expired."""
        item = self.r.lookup("d", sid)
        if item is None or item[2] is None or item[3] <= self.r.now():
            return reply(None)
        reply({"data": item[2]["data"], "expires": item[3], "hlc": item[0], "origin": item[1]})

    def op_session_data_delete(self, reply: Reply, sid: str) -> None:
        """Destroy the session's data everywhere: a tombstone that outlives every copy of it, by the grace.

        As with a logout (``op_session_revoke``), a sid this node has not heard
        of gets a full session lifetime from now.
        """
        d, r = self.d, self.r
        problem = _sid_problem(sid)
        if problem:
            return reply(error=problem, code="invalid")
        item = r.lookup("d", sid)
        ends = item[3] if item else r.now() + d.settings.session_ttl_s * 1000
        expires = ends + TOMBSTONE_GRACE_MS
        d.write("d", sid, None, expires)
        reply({"expires": expires})

    # ---- inspection and fault injection ---------------------------------

    def op_status(self, reply: Reply) -> None:
        reply(self.d.status())

    def op_metrics(self, reply: Reply) -> None:
        """The figures a web's ``/metrics`` exposes, in one answer per scrape (docs/operations.md lists them)."""
        reply(metrics_view(self.r.state(), self.r.members(), self.d.uptime_s()))

    def op_peers(self, reply: Reply) -> None:
        reply(self.r.peers_report())

    def op_cache(self, reply: Reply, user: str | None, sessions: bool, limit: int) -> None:
        """Redacted rows of every kind but sessions, or of sessions only (``sessions``)."""
        rows = []
        for entry in self.r.entries():
            kind = KINDS[entry.kind]
            if (entry.kind == "s") != sessions or (user is not None and kind.owner(entry.key, entry.value) != user):
                continue
            rows.append(kind.redacted(entry))
            if len(rows) >= limit:
                break
        reply({"node": self.r.name, "entries": rows})

    def op_partition(self, reply: Reply, peers: list, replace: bool) -> None:
        """Drop every bus and peer message to and from these peers (the harness's cut)."""
        blocked = self.r.partition({p for p in peers if isinstance(p, str)}, replace)
        reply({"blocked": blocked})

    def op_heal(self, reply: Reply) -> None:
        self.r.heal()
        reply({"blocked": []})

    # ---- login failures, counted across the cluster ----------------------
    #
    # Each node counts failures for a subject ("user:alice", "addr:10.0.0.9")
    # under its own key, "<subject>@<node>", so no two nodes ever write the
    # same key and last-writer-wins loses no increment; the count is the sum
    # over nodes.  A count expires at the end of its window.

    def op_failures_add(self, reply: Reply, subjects: list, window_s: int) -> None:
        d, r = self.d, self.r
        now = r.now()
        for subject in _subjects(subjects):
            key = f"{subject}@{r.name}"
            item = r.lookup("t", key)
            if item is not None and item[2] is not None and item[3] > now:  # a live count: add to it
                count, expires = item[2]["n"] + 1, item[3]
            else:
                count, expires = 1, now + window_s * 1000
            d.write("t", key, {"n": count}, expires)
        self.op_failures_count(reply, subjects)

    def op_failures_count(self, reply: Reply, subjects: list) -> None:
        """{subject: {"n": failures in the window, summed over nodes, "retry_after_s": until it ends}}."""
        now = self.r.now()
        result = {}
        for subject in _subjects(subjects):
            count, until = 0, now
            for item in self._failure_items(subject):
                if item[2] is not None and item[3] > now:
                    count += item[2]["n"]
                    until = max(until, item[3])
            result[subject] = {"n": count, "retry_after_s": -(-(until - now) // 1000)}
        reply(result)

    def op_failures_reset(self, reply: Reply, subjects: list) -> None:
        """A successful login clears the count on every node, by tombstoning each node's key."""
        d, r = self.d, self.r
        for subject in _subjects(subjects):
            for node in [r.name, *r.peer_names()]:
                item = r.lookup("t", f"{subject}@{node}")
                if item is not None and item[2] is not None:
                    d.write("t", f"{subject}@{node}", None, item[3])
        reply({})

    def _failure_items(self, subject: str) -> list:
        r = self.r
        items = (r.lookup("t", f"{subject}@{node}") for node in [r.name, *r.peer_names()])
        return [item for item in items if item is not None]

    def op_trace(self, reply: Reply) -> None:
        """The propagation trace (``--trace``): publish and apply times per username since the last call."""
        taken = self.r.take_trace()
        if taken is None:
            return reply(error="tracing is off (start the daemon with --trace / LOGONMESH_TRACE=1)",
                         code="not_enabled")
        reply({"node": self.r.name, **taken})

    def op_lossy(self, reply: Reply, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            return reply(error="fraction must be between 0 and 1", code="invalid")
        self.r.set_loss(fraction)
        reply({"loss": fraction})


def metrics_view(state: dict[str, Any], peers_known: int, uptime_s: float) -> dict[str, Any]:
    """Numbers only, from the replica's state and stats: no name, token, key or address can be in them.

    Counters are the daemon's own since it started (``uptime_s`` says when a
    restart reset them); ``refused`` maps each drop reason (docs/wire.md §7)
    to its count.
    """
    stats, cache = state["stats"], state["cache"]
    return {
        "uptime_s": round(uptime_s, 3),
        "peers_up": len(state["peers_up"]), "peers_known": peers_known,
        "users": cache["users"], "sessions": cache["sessions"], "session_tombstones": cache["tombstones"],
        "session_data": cache["session_data"], "records": cache["records"],
        "merges_published": stats.get("out_merge", 0), "merges_applied": stats.get("in_merge", 0),
        "refused": {name[len("drop_"):]: n for name, n in stats.items() if name.startswith("drop_")},
        "repairs_started": stats.get("repairs_started", 0), "repairs_done": stats.get("repairs_done", 0),
        "repairs_failed": stats.get("repairs_failed", 0), "repairs_timed_out": stats.get("repairs_timed_out", 0),
        "repair_bytes_in": stats.get("repair_bytes_in", 0), "repair_bytes_out": stats.get("repair_bytes_out", 0),
        "clock_offset_warnings": stats.get("clock_offset_warnings", 0),
    }


def check_args(op: str, args: dict) -> str | None:
    schema = OPS.get(op)
    if schema is None:
        return f"unknown op {op[:40]!r}"
    if args.keys() != schema.keys():
        return f"{op} takes {sorted(schema)}, got {sorted(args, key=repr)[:10]}"
    for name, kind in schema.items():
        if not isinstance(args[name], kind) or (kind is int and isinstance(args[name], bool)):
            return f"{op}.{name} must be {getattr(kind, '__name__', kind)}"
    return None


def _subjects(subjects: list) -> list[str]:
    """Only short strings count as subjects; anything else in the list is ignored."""
    return [s for s in subjects[:16] if isinstance(s, str) and 0 < len(s) <= 200]


def _sid_problem(sid: str) -> str | None:
    """The wire's own rule for the key of a session-data entry, so peers never refuse what we write."""
    return None if SESSION_DATA.key_ok(sid) else "a session id is 16 to 64 characters of A-Z, a-z, 0-9, '-' and '_'"


def _session_view(entry: Entry) -> dict:
    """A session as people and tools see it: its public id, never its token."""
    value = entry.value
    return {"id": session_id(entry.key), "node": value["node"], "created_at": value["created_at"],
            "last_seen": value["last_seen"], "device": value["device"], "expires": entry.expires}


def _record_view(entry: Entry) -> dict:
    """A record as the ipc ops answer it: its namespace, key, value and version."""
    namespace, key = split_record_key(entry.key)
    return {"namespace": namespace, "key": key, "value": entry.value["v"] if entry.value else None,
            "deleted": entry.value is None, "hlc": entry.hlc, "origin": entry.origin}
