"""The durable user record and the apps' records: ``users`` and ``records`` tables in the cluster database.

Only the daemon's worker thread calls these functions (never the event loop),
and only at boot, on registration and by repair.  Lookups are served from the
cache so that a partition really is one.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Callable, Iterator, Protocol, TypeVar

import msgpack
import sqlite_utils

from logonmesh.daemon.kinds import Entry

BUSY_TIMEOUT_MS = 750  # below the web's 1 s: a locked file says "unavailable" before the web gives up
T = TypeVar("T")


class UsernameTaken(Exception):
    """The unique constraint on ``users.username`` refused the insert."""


class StoreUnavailable(ConnectionError):
    """A networked store (Redis) cannot be reached or refused; the message is one line for a person.

    A ConnectionError, hence an OSError: the CLI reports it at start as one
    line, and once running the daemon answers "the user store is unavailable".
    """


class Users(Protocol):
    """What the daemon needs from the durable user record, whatever holds it."""

    def insert(self, user: dict, node: str) -> None:
        """Store a new user atomically, noting which node wrote it; raise UsernameTaken if the name exists."""

    def written_by(self, node: str) -> Iterator[dict]:
        """The users a node wrote: what the others adopt when that node vanishes for good."""

    def load(self) -> Iterator[dict]:
        """Every user (id, username, password_hash, created_at), read in pages."""

    def restore(self, users: list[dict]) -> int:
        """Write back users the store lost (a Redis without persistence restarted); returns how many."""

    def save_record(self, entry: Entry) -> None:
        """Store a record entry (kind "r", tombstones too) unless the store holds a higher version of its key.

        The version is stored with it, so a node booting from the store rebuilds
        the same entry and the same digest; and a write that lost last-writer-wins
        in the mesh loses it in the store as well, whatever order the writes land in.
        """

    def load_records(self) -> Iterator[Entry]:
        """Every stored record entry, tombstones included."""

    def close(self) -> None:
        """Release the connection."""


def open_users(url: str) -> Users:
    """The user store named by the --db setting: a path, sqlite:///path, or redis://host:port/N."""
    if url.startswith(("redis://", "rediss://")):
        from logonmesh.daemon.redis_store import RedisUserStore
        return RedisUserStore(url)
    return UserStore(url[len("sqlite:///") - 1:] if url.startswith("sqlite:///") else url)


def open_db(path: str) -> sqlite_utils.Database:
    """Open the shared cluster database for one thread: WAL, a busy timeout, tables present."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)
    with_retry(lambda: _prepare(db))
    return db


def _prepare(db: sqlite_utils.Database) -> None:
    if db.journal_mode != "wal":
        db.enable_wal()
    ensure_tables(db)


def with_retry(fn: Callable[[], T], seconds: float = 5.0) -> T:
    """Run fn, retrying while SQLite says "locked".

    Switching to WAL and creating tables take locks that the busy timeout does
    not always cover when several daemons open a new file at the same instant.
    """
    deadline = time.monotonic() + seconds
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def ensure_tables(db: sqlite_utils.Database) -> None:
    db["users"].create({"id": str, "username": str, "password_hash": str, "created_at": str},
                       pk="id", not_null={"username", "password_hash", "created_at"}, if_not_exists=True)
    db["users"].create_index(["username"], unique=True, if_not_exists=True)
    if "node" not in db["users"].columns_dict:  # optional: which node wrote the row (NULL for others' rows)
        try:
            db["users"].add_column("node", str)
        except sqlite3.OperationalError as exc:  # another daemon opening the new file added it first
            if "duplicate column" not in str(exc):
                raise
    db["users"].create_index(["node"], if_not_exists=True)
    db["records"].create({"key": str, "namespace": str, "hlc": int, "origin": str, "value": bytes},
                         pk="key", not_null={"namespace", "hlc", "origin"}, if_not_exists=True)


def pack_value(value: Any) -> bytes | None:
    """A record entry's value as stored: msgpack bytes, or None for a tombstone."""
    return None if value is None else msgpack.packb(value, use_bin_type=True)


def unpack_value(blob: bytes | None) -> Any:
    return None if blob is None else msgpack.unpackb(blob, raw=False)


# Last-writer-wins in SQL: a row is replaced only by a strictly higher (hlc, origin).
SAVE_RECORD_SQL = """
insert into records (key, namespace, hlc, origin, value) values (?, ?, ?, ?, ?)
on conflict(key) do update set namespace = excluded.namespace, hlc = excluded.hlc,
    origin = excluded.origin, value = excluded.value
where excluded.hlc > records.hlc or (excluded.hlc = records.hlc and excluded.origin > records.origin)
"""


class UserStore:
    """The users table, for one thread."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)

    def insert(self, user: dict, node: str) -> None:
        try:
            self.db["users"].insert(dict(user, node=node))
        except sqlite3.IntegrityError:
            raise UsernameTaken(user["username"]) from None

    def written_by(self, node: str) -> Iterator[dict]:
        yield from self.db.query("select id, username, password_hash, created_at from users where node = ?",
                                 [node])

    def load(self) -> Iterator[dict]:
        yield from self.db.query("select id, username, password_hash, created_at from users")

    def restore(self, users: list[dict]) -> int:
        """Nothing to do: a file does not forget its rows.

        A missing registry row here means it was pruned (the node was stopped
        too long), not that the users are gone, and rewriting every user would
        hold the shared file's write lock for as long as that takes.
        """
        return 0

    def save_record(self, entry: Entry) -> None:
        namespace = entry.key.partition("/")[0]
        # HLCs fit SQLite's signed 64-bit integer until the year 10 000 (wall_ms << 16 < 2**63)
        args = [entry.key, namespace, entry.hlc, entry.origin, pack_value(entry.value)]
        with_retry(lambda: self.db.execute(SAVE_RECORD_SQL, args))

    def load_records(self) -> Iterator[Entry]:
        for row in self.db.query("select key, hlc, origin, value from records"):
            yield Entry("r", row["key"], row["hlc"], row["origin"], unpack_value(row["value"]), 0)

    def close(self) -> None:
        self.db.conn.close()
