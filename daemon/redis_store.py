"""The durable user record in Redis, for clusters that span hosts.

One hash per user, ``<prefix>:user:<username>``, holding id, username,
password_hash and created_at; one per app record, ``<prefix>:record:<namespace>/<key>``, holding its
version and its packed value (see ``SAVE_RECORD_LUA``).  The key is the username, so uniqueness is the
key's existence: a Lua script checks and writes in one step, and two nodes
racing for one name (even on two sides of a mesh partition, as long as both
reach Redis) get exactly one winner.  Boot reads every user with SCAN and
pipelined HGETALL, one page per round trip, so a large user base neither
blocks Redis (no KEYS) nor needs one huge reply.

As in the SQLite store, only the daemon's worker thread calls this, and only at
boot, on registration and on restore: lookups are served from the mesh cache.
"""

from __future__ import annotations

import logging
from typing import Iterator

import redis

from logonmesh.daemon.kinds import Entry
from logonmesh.daemon.store import UsernameTaken, pack_value, unpack_value
from logonmesh.discovery.redis import RedisLink, glob_escape

log = logging.getLogger(__name__)

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


class RedisUserStore:
    """The Users protocol on Redis, for one thread (redis-py clients are thread-safe, but one per thread is simplest)."""

    def __init__(self, url: str, page: int = LOAD_PAGE) -> None:
        self.link = RedisLink(url)
        self.page = page
        self.bad_rows = 0
        self._insert = self.link.client.register_script(INSERT_LUA)
        self._save_record = self.link.client.register_script(SAVE_RECORD_LUA)

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

    def save_record(self, entry: Entry) -> None:
        """One hash per record, its version included; the value as hex (the client decodes replies as text)."""
        packed = pack_value(entry.value)
        args = [f"{entry.hlc:020d}", entry.origin, "" if packed is None else "x" + packed.hex()]
        self.link.call("store a record", lambda c: self._save_record(
            keys=[self.link.key("record", entry.key)], args=args, client=c))

    def load_records(self) -> Iterator[Entry]:
        prefix = self.link.key("record") + ":"
        for keys in self.link.scan("load the records", glob_escape(prefix) + "*", self.page):
            for key, fields in zip(keys, self.link.hgetall_many("load the records", keys)):
                try:
                    blob = fields["value"]
                    value = unpack_value(bytes.fromhex(blob[1:]) if blob else None)
                    yield Entry("r", key[len(prefix):], int(fields["hlc"]), fields["origin"], value, 0)
                except (KeyError, ValueError, TypeError):
                    if fields:  # an empty dict was deleted between SCAN and HGETALL
                        self.bad_rows += 1
                        log.warning("ignoring a malformed record hash %s", key[:80])

    def close(self) -> None:
        self.link.close()
