"""The Redis backend, for clusters whose nodes live on several hosts: the registry and the durable record.

A shared SQLite file cannot be shared safely over a network filesystem; Redis
can be reached from every host.  Layout, under a prefix (default
``logonmesh``, set with ``?prefix=`` in the URL so that one Redis can hold
several clusters):

* ``<prefix>:node:<name>``: a hash, one per live node, the fields of NodeRow.
  Its TTL is the daemon's stale limit (10 x the down-after period, 30 s with
  the defaults) and every heartbeat resets it, so a dead node's row vanishes
  by itself: ``prune`` has nothing to do.

Listing walks SCAN to the end (one page is never the whole answer), and a
name read back is checked against ``NAME_RE`` before anything uses it: the
keyspace is shared, so a row is input, not truth.

Every Redis call goes through ``RedisLink``: short socket timeouts, and a
breaker that fails calls at once for a second after the server was found
unreachable.  The daemon's worker thread runs these calls, and a registration
queued behind a heartbeat must not wait for a dead server's timeouts.

* ``<prefix>:user:<username>``: the durable record of a user, a hash of id,
  username, password_hash and created_at; ``<prefix>:by-node:<name>`` the set
  of usernames a node wrote; ``<prefix>:record:<namespace>/<key>`` one app record, its
  version and its packed value (see ``SAVE_RECORD_LUA``).
* ``<prefix>:session:<kind>:<key>``: one session entry (a daemon session ``s`` or web
  session data ``d``), its version, packed value and expiry, by the sessions' lattice
  (see ``SAVE_SESSION_LUA``).  The key expires at the entry's expiry (PEXPIREAT, in
  Redis's clock: the expiry was written in the writing node's, so the two differ by
  the hosts' clock offset), so ``purge_sessions`` has nothing to do.

The key is the username, so uniqueness is the key's existence: a Lua script checks and writes in one step, and two nodes
racing for one name (even on two sides of a mesh partition, as long as both
reach Redis) get exactly one winner.  Boot reads every user with SCAN and
pipelined HGETALL, one page per round trip, so a large user base neither
blocks Redis (no KEYS) nor needs one huge reply.

As in the SQLite store, only the daemon's worker thread calls this, and only at
boot, on registration and on restore: lookups are served from the mesh cache.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict
from typing import Callable, Iterator, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from logonmesh.discovery import NAME_RE, NodeRow, StoredRecord, StoredSession, StoreUnavailable, UsernameTaken
from logonmesh.discovery.sqlite import pack_value, unpack_value

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PREFIX = "logonmesh"
PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CONNECT_TIMEOUT_S = 0.5   # a LAN connect that takes longer is not going to succeed
SOCKET_TIMEOUT_S = 1.0    # one slow reply may delay the worker this long, no more
PROBE_INTERVAL_S = 1.0    # after a failure, calls fail at once for this long, then one probes
SCAN_COUNT = 500          # keys asked per SCAN page (a hint to Redis, not a limit)
DEFAULT_ROW_TTL_MS = 30_000  # 10 x down-after x heartbeat at the default settings
ROW_FIELDS = ("id", "bus_endpoint", "peer_endpoint", "host", "pid", "incarnation", "started_at",
              "heartbeat_at")

# Touch the row only if it is still ours (same incarnation): a restarted node's row is not ours to extend.
REFRESH_LUA = """
if redis.call('HGET', KEYS[1], 'incarnation') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
WITHDRAW_LUA = """
if redis.call('HGET', KEYS[1], 'incarnation') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def open_registry(url: str, row_ttl_ms: int | None = None) -> "RedisRegistry":
    return RedisRegistry(url, row_ttl_ms)


def open_store(url: str) -> "RedisStore":
    return RedisStore(url)


def check_url(url: str) -> str:
    """The setting as given, once ``parse_url`` found nothing wrong with it (ValueError otherwise)."""
    parse_url(url)
    return url


def parse_url(url: str) -> tuple[str, str]:
    """Split ``redis://host:port/N?prefix=P`` into (the URL for redis-py, the key prefix).

    Raises ValueError with a message for a person: the setting is checked at
    start, not at the first query.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"must be redis://host:port/N, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"names no host: {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"has a bad port: {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number (redis://host:port/N), got {path!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"prefix must match [A-Za-z0-9_.-]{{1,64}}, got {prefix!r}")
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


def glob_escape(text: str) -> str:
    """A literal for a SCAN MATCH pattern (prefixes may contain none of these, but names could)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _Health:
    """Whether a Redis URL answered lately; shared by every client of that URL in this process."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self.down_since: float | None = None
        self.answered = False  # before the first answer, the caller reports (at start: one line, exit 1)

    def failed(self, url: str, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            if self.answered:
                log.warning("redis at %s is unreachable: %s (retrying every %.1f s)", url, exc,
                            PROBE_INTERVAL_S)
        self.down_until = time.monotonic() + PROBE_INTERVAL_S

    def ok(self, url: str) -> None:
        self.answered = True
        if self.down_since is not None:
            log.warning("redis at %s is back after %.1f s", url, time.monotonic() - self.down_since)
            self.down_since = None
        self.down_until = 0.0


_health: dict[str, _Health] = {}
_health_lock = threading.Lock()


def health(url: str) -> _Health:
    with _health_lock:
        return _health.setdefault(url, _Health())


class RedisLink:
    """One redis-py client with short timeouts, a breaker, and errors turned into StoreUnavailable."""

    def __init__(self, url: str) -> None:
        client_url, self.prefix = parse_url(url)
        self.url = redacted(url)
        self.health = health(url)
        # One quick retry on a connection error: after a Redis restart the pooled socket is stale
        # and a fresh one works.  Timeouts are not retried: the server is not answering.
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        self.client = redis.Redis.from_url(
            client_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S, retry=retry, health_check_interval=30)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def call(self, what: str, fn: Callable[[redis.Redis], T]) -> T:
        """Run fn(client); any Redis failure becomes StoreUnavailable, naming what was being done."""
        if time.monotonic() < self.health.down_until:
            raise StoreUnavailable(f"cannot {what}: redis at {self.url} is unreachable")
        try:
            result = fn(self.client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.health.failed(self.url, exc)
            raise StoreUnavailable(f"cannot {what}: redis at {self.url} is unreachable ({exc})") from None
        except redis.RedisError as exc:  # the server answered with an error (READONLY, OOM, auth...)
            raise StoreUnavailable(f"cannot {what}: redis at {self.url} refused: {exc}") from None
        self.health.ok(self.url)
        return result

    def scan(self, what: str, match: str, count: int) -> Iterator[list[str]]:
        """Every key matching, one SCAN page at a time, until the cursor comes back to 0.

        SCAN may return a key twice; each is yielded once.
        """
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, keys = self.call(what, lambda c: c.scan(cursor, match=match, count=count))
            # the client decodes its responses (decode_responses=True): every key is a str
            fresh = [k for k in cast(list[str], keys) if k not in seen]
            seen.update(fresh)
            if fresh:
                yield fresh
            if int(cursor) == 0:
                return

    def hgetall_many(self, what: str, keys: list[str]) -> list[dict]:
        """One round trip for a page of hashes (pipelined, no transaction needed for reads)."""
        def run(c: redis.Redis) -> list[dict]:
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.hgetall(k)
            return pipe.execute()
        return self.call(what, run)

    def close(self) -> None:
        self.client.close()


class RedisRegistry:
    """The Registry protocol on Redis: one hash per node, expiring unless its heartbeat refreshes it."""

    def __init__(self, url: str, row_ttl_ms: int | None = None, scan_count: int = SCAN_COUNT) -> None:
        self.link = RedisLink(url)
        self.ttl_ms = int(row_ttl_ms or DEFAULT_ROW_TTL_MS)
        self.scan_count = scan_count
        self.bad_rows = 0
        self._reported: set[str] = set()
        self._refresh = self.link.client.register_script(REFRESH_LUA)
        self._withdraw = self.link.client.register_script(WITHDRAW_LUA)

    def _key(self, node_id: str) -> str:
        return self.link.key("node", node_id)

    def announce(self, row: NodeRow) -> None:
        if not NAME_RE.match(row.id):
            raise ValueError(f"bad node name {row.id!r}")

        def run(c: redis.Redis) -> None:
            pipe = c.pipeline(transaction=True)
            key = self._key(row.id)
            pipe.delete(key)  # a stale row of an earlier incarnation must not leave fields behind
            pipe.hset(key, mapping={k: str(v) for k, v in asdict(row).items()})
            pipe.pexpire(key, self.ttl_ms)
            pipe.execute()
        self.link.call("announce this node", run)

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        touched = self.link.call("refresh this node's row", lambda c: self._refresh(
            keys=[self._key(node_id)], args=[str(incarnation), str(heartbeat_at), self.ttl_ms], client=c))
        return touched == 1

    def peers(self) -> list[NodeRow]:
        rows: list[NodeRow] = []
        match = glob_escape(self.link.key("node")) + ":*"
        for keys in self.link.scan("list the nodes", match, self.scan_count):
            for key, fields in zip(keys, self.link.hgetall_many("read the nodes", keys)):
                row = self._parse(key, fields)
                if row is not None:
                    rows.append(row)
        return rows

    def _parse(self, key: str, fields: dict) -> NodeRow | None:
        """A row we can trust, or None (counted, and logged once per key)."""
        name = key[len(self.link.key("node")) + 1:]
        if not fields:  # expired between SCAN and HGETALL
            return None
        problem = None
        if not NAME_RE.match(name):
            problem = "bad node name"
        elif fields.get("id") != name:
            problem = "id does not match the key"
        else:
            try:
                row = NodeRow(id=name, bus_endpoint=_tcp(fields["bus_endpoint"]),
                              peer_endpoint=_tcp(fields["peer_endpoint"]), host=fields["host"],
                              pid=int(fields["pid"]), incarnation=int(fields["incarnation"]),
                              started_at=float(fields["started_at"]),
                              heartbeat_at=float(fields["heartbeat_at"]))
                return row
            except (KeyError, ValueError) as exc:
                problem = f"malformed row ({exc})"
        self.bad_rows += 1
        if key not in self._reported and len(self._reported) < 1000:
            self._reported.add(key)
            log.warning("ignoring registry key %r: %s", key[:200], problem)
        return None

    def withdraw(self, node_id: str, incarnation: int) -> None:
        self.link.call("withdraw this node", lambda c: self._withdraw(
            keys=[self._key(node_id)], args=[str(incarnation)], client=c))

    def prune(self, stale_after_s: float) -> list[str]:
        """Nothing to do: each row's TTL deletes it once it is stale."""
        return []

    def close(self) -> None:
        self.link.close()


def _tcp(endpoint: str) -> str:
    if not endpoint.startswith("tcp://") or len(endpoint) > 300:
        raise ValueError(f"not a tcp endpoint: {endpoint[:60]!r}")
    return endpoint


# ---- the durable record ----------------------------------------------------

FIELDS = ("id", "username", "password_hash", "created_at")
LOAD_PAGE = 1000      # users per SCAN page and per pipelined HGETALL at boot
RESTORE_PAGE = 500    # users per pipelined restore round trip

# Create the user only if the username is free; 1 when created, 0 when taken.  KEYS[2], when
# given, is the set of usernames the writing node created (see written_by).
INSERT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'username', ARGV[2], 'password_hash', ARGV[3], 'created_at', ARGV[4])
if KEYS[2] then
  redis.call('SADD', KEYS[2], ARGV[2])
end
return 1
"""

# Last-writer-wins in one step: replace the record only with a strictly higher (hlc, origin).  An HLC
# exceeds a Lua number's 53 bits, so it is compared as a zero-padded 20-digit string.
SAVE_RECORD_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'hlc', 'origin')
if cur[1] and (cur[1] > ARGV[1] or (cur[1] == ARGV[1] and cur[2] >= ARGV[2])) then
  return 0
end
redis.call('HSET', KEYS[1], 'hlc', ARGV[1], 'origin', ARGV[2], 'value', ARGV[3])
return 1
"""

# The sessions' lattice (Store.save_sessions) in one step: an ending ('' value) beats a live entry, else the
# higher (hlc, origin); a kept ending takes the later expiry.  Expiries are ms since the epoch: a Lua number
# holds them exactly (53 bits are 285,000 years of ms).
SAVE_SESSION_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'hlc', 'origin', 'value', 'expires')
local dead, expires = ARGV[3] == '', tonumber(ARGV[4])
local wins = true
if cur[1] then
  local was_dead = cur[3] == ''
  if dead ~= was_dead then
    wins = dead
  else
    wins = ARGV[1] > cur[1] or (ARGV[1] == cur[1] and ARGV[2] > cur[2])
  end
  if (wins and dead) or (not wins and was_dead) then
    expires = math.max(expires, tonumber(cur[4]))
  elseif not wins then
    return 0
  end
  if not wins and expires == tonumber(cur[4]) then
    return 0
  end
end
if wins then
  redis.call('HSET', KEYS[1], 'hlc', ARGV[1], 'origin', ARGV[2], 'value', ARGV[3], 'expires', expires)
else
  redis.call('HSET', KEYS[1], 'expires', expires)
end
if expires > 0 then
  redis.call('PEXPIREAT', KEYS[1], expires)
end
return 1
"""


def _packed_hex(value: object) -> str:
    """A value as a reply-safe string: "x" and the hex of its msgpack, or "" for an ending."""
    packed = pack_value(value)
    return "" if packed is None else "x" + packed.hex()


class RedisStore:
    """The Store protocol on Redis, for one thread.

    redis-py clients are thread-safe, but one per thread is simplest.
    """

    def __init__(self, url: str, page: int = LOAD_PAGE) -> None:
        self.link = RedisLink(url)
        self.page = page
        self.bad_rows = 0
        self._insert = self.link.client.register_script(INSERT_LUA)
        self._save_record = self.link.client.register_script(SAVE_RECORD_LUA)
        self._save_session = self.link.client.register_script(SAVE_SESSION_LUA)

    def _key(self, username: str) -> str:
        return self.link.key("user", username)

    def insert(self, user: dict, node: str) -> None:
        created = self.link.call("register a user", lambda c: self._insert(
            keys=[self._key(user["username"]), self.link.key("by-node", node)],
            args=[str(user[f]) for f in FIELDS], client=c))
        if created != 1:
            raise UsernameTaken(user["username"])

    def written_by(self, node: str) -> Iterator[dict]:
        names = sorted(self.link.call("list a node's users",
                                      lambda c: c.smembers(self.link.key("by-node", node))))
        for i in range(0, len(names), self.page):
            page = names[i:i + self.page]

            def fetch(c: redis.Redis, page: list = page) -> list:
                pipe = c.pipeline(transaction=False)
                for name in page:
                    pipe.hgetall(self._key(name))
                return pipe.execute()
            for fields in self.link.call("read a node's users", fetch):
                user = self._parse(fields)
                if user is not None:
                    yield user

    def load(self) -> Iterator[dict]:
        match = glob_escape(self.link.key("user")) + ":*"
        for keys in self.link.scan("load the users", match, self.page):
            for fields in self.link.hgetall_many("load the users", keys):
                user = self._parse(fields)
                if user is not None:
                    yield user

    def _parse(self, fields: dict) -> dict | None:
        if not fields:  # deleted between SCAN and HGETALL
            return None
        if any(not fields.get(f) for f in FIELDS):
            self.bad_rows += 1
            log.warning("ignoring a user hash without %s", ", ".join(f for f in FIELDS if not fields.get(f)))
            return None
        return {f: fields[f] for f in FIELDS}

    def restore(self, users: list[dict]) -> int:
        """Write back every user Redis lacks (it restarted without persistence); existing names win."""
        restored = 0
        for i in range(0, len(users), RESTORE_PAGE):
            page = users[i:i + RESTORE_PAGE]

            def run(c: redis.Redis, page: list[dict] = page) -> list:
                pipe = c.pipeline(transaction=False)
                for user in page:
                    self._insert(keys=[self._key(user["username"])], args=[str(user[f]) for f in FIELDS],
                                 client=pipe)
                return pipe.execute()
            restored += sum(1 for r in self.link.call("restore users", run) if r == 1)
        return restored

    def save_record(self, record: StoredRecord) -> None:
        """One hash per record, its version included; the value as hex (the client decodes replies as text)."""
        args = [f"{record.hlc:020d}", record.origin, _packed_hex(record.value)]
        self.link.call("store a record", lambda c: self._save_record(
            keys=[self.link.key("record", record.key)], args=args, client=c))

    def load_records(self) -> Iterator[StoredRecord]:
        prefix = self.link.key("record") + ":"
        for keys in self.link.scan("load the records", glob_escape(prefix) + "*", self.page):
            for key, fields in zip(keys, self.link.hgetall_many("load the records", keys)):
                try:
                    blob = fields["value"]
                    value = unpack_value(bytes.fromhex(blob[1:]) if blob else None)
                    yield StoredRecord(key[len(prefix):], int(fields["hlc"]), fields["origin"], value)
                except (KeyError, ValueError, TypeError):
                    if fields:  # an empty dict was deleted between SCAN and HGETALL
                        self.bad_rows += 1
                        log.warning("ignoring a malformed record hash %s", key[:80])

    def _session_key(self, kind: str, key: str) -> str:
        return self.link.key("session", kind, key)

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        """The whole batch in one pipelined round trip, one script call per entry."""
        if not sessions:
            return

        def run(c: redis.Redis) -> list:
            pipe = c.pipeline(transaction=False)
            for e in sessions:
                self._save_session(keys=[self._session_key(e.kind, e.key)],
                                   args=[f"{e.hlc:020d}", e.origin, _packed_hex(e.value), str(e.expires)],
                                   client=pipe)
            return pipe.execute()
        self.link.call("store sessions", run)

    def load_sessions(self, now_ms: int) -> Iterator[StoredSession]:
        prefix = self.link.key("session") + ":"
        for keys in self.link.scan("load the sessions", glob_escape(prefix) + "*", self.page):
            for key, fields in zip(keys, self.link.hgetall_many("load the sessions", keys)):
                if not fields:  # expired or deleted between SCAN and HGETALL
                    continue
                try:
                    kind, _, own = key[len(prefix):].partition(":")
                    blob, expires = fields["value"], int(fields["expires"])
                    value = unpack_value(bytes.fromhex(blob[1:]) if blob else None)
                    entry = StoredSession(kind, own, int(fields["hlc"]), fields["origin"], value, expires)
                except (KeyError, ValueError, TypeError):
                    self.bad_rows += 1
                    log.warning("ignoring a malformed session hash (its key names a credential: not shown)")
                    continue
                if not expires or expires > now_ms:
                    yield entry

    def purge_sessions(self, now_ms: int) -> int:
        """Nothing to do: each key expires by itself (PEXPIREAT)."""
        return 0

    def close(self) -> None:
        self.link.close()
