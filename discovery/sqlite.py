"""The SQLite backend: the ``clusters`` table and the durable record, in one shared file.

The file is shared by the nodes of one host, in WAL mode.  Only the daemon's
worker thread (never its event loop) calls into it: at boot, on registration,
for the registry's heartbeat and poll, and by repair.  Lookups are served from
the mesh cache so that a partition really is one.

Every registry call retries while the file is locked, for up to ``RETRY_S``:
waiting on the worker costs nobody a page, and a dozen daemons refreshing
their rows each heartbeat do collide on a busy machine.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import asdict
from typing import Any, Callable, Iterator, TypeVar

import msgpack
import sqlite_utils

from logonmesh.discovery import NodeRow, StoredRecord, StoredSession, UsernameTaken

BUSY_TIMEOUT_MS = 750  # below the web's 1 s: a locked file says "unavailable" before the web gives up
RETRY_S = 3.0
T = TypeVar("T")


def open_registry(url: str, row_ttl_ms: int | None = None) -> "SqliteRegistry":
    """Rows stay until ``prune``: a file has no TTL, so ``row_ttl_ms`` is not needed here."""
    return SqliteRegistry(_path(url))


def open_store(url: str) -> "SqliteStore":
    return SqliteStore(_path(url))


def _path(url: str) -> str:
    return url[len("sqlite:///") - 1:] if url.startswith("sqlite:///") else url


def open_db(path: str) -> sqlite_utils.Database:
    """Open the shared cluster database for one thread: WAL, a busy timeout, tables present."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    _create_private(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db = sqlite_utils.Database(conn)
    with_retry(lambda: _prepare(db))
    return db


def _create_private(path: str) -> None:
    """Make the file 0600 before SQLite opens it: it holds password hashes.

    SQLite gives the -wal and -shm files the mode of the database file, so
    these are born 0600 too, with no window of wider access and without
    touching the process-wide umask that other threads rely on.  An existing
    file keeps its mode: an operator may have opened it to a group on purpose.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


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
    users = db.table("users")  # db.table, not db[...]: a Table, never a View
    users.create({"id": str, "username": str, "password_hash": str, "created_at": str},
                 pk="id", not_null={"username", "password_hash", "created_at"}, if_not_exists=True)
    users.create_index(["username"], unique=True, if_not_exists=True)
    if "node" not in users.columns_dict:  # optional: which node wrote the row (NULL for others' rows)
        try:
            users.add_column("node", str)
        except sqlite3.OperationalError as exc:  # another daemon opening the new file added it first
            if "duplicate column" not in str(exc):
                raise
    users.create_index(["node"], if_not_exists=True)
    db.table("records").create({"key": str, "namespace": str, "hlc": int, "origin": str, "value": bytes},
                               pk="key", not_null={"namespace", "hlc", "origin"}, if_not_exists=True)
    sessions = db.table("sessions")
    sessions.create({"kind": str, "key": str, "hlc": int, "origin": str, "value": bytes, "expires": int},
                    pk=("kind", "key"), not_null={"hlc", "origin", "expires"}, if_not_exists=True)
    sessions.create_index(["expires"], if_not_exists=True)


def pack_value(value: Any) -> bytes | None:
    """A record's value as stored: msgpack bytes, or None for a deletion."""
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

# The sessions' lattice in SQL (see Store.save_sessions): an ending beats a live row, else the higher version.
# Every expression of an upsert's SET reads the old row, so the rule can be written once and used four times.
_NEW_WINS = """(excluded.value is null and sessions.value is not null
  or (excluded.value is null) = (sessions.value is null)
     and (excluded.hlc > sessions.hlc or excluded.hlc = sessions.hlc and excluded.origin > sessions.origin))"""
SAVE_SESSION_SQL = f"""
insert into sessions (kind, key, hlc, origin, value, expires) values (?, ?, ?, ?, ?, ?)
on conflict(kind, key) do update set
    hlc = case when {_NEW_WINS} then excluded.hlc else sessions.hlc end,
    origin = case when {_NEW_WINS} then excluded.origin else sessions.origin end,
    value = case when {_NEW_WINS} then excluded.value else sessions.value end,
    expires = case when {_NEW_WINS} and excluded.value is not null then excluded.expires
                   when {_NEW_WINS} or sessions.value is null then max(excluded.expires, sessions.expires)
                   else sessions.expires end
where {_NEW_WINS} or (sessions.value is null and excluded.expires > sessions.expires)
"""


def session_row(entry: StoredSession) -> tuple:
    return (entry.kind, entry.key, entry.hlc, entry.origin, pack_value(entry.value), entry.expires)


class SqliteStore:
    """The durable record in the shared file (the users and records tables), for one thread."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)

    def insert(self, user: dict, node: str) -> None:
        try:
            self.db.table("users").insert(dict(user, node=node))
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

    def save_record(self, record: StoredRecord) -> None:
        namespace = record.key.partition("/")[0]
        # HLCs fit SQLite's signed 64-bit integer until the year 10 000 (wall_ms << 16 < 2**63)
        args = [record.key, namespace, record.hlc, record.origin, pack_value(record.value)]
        with_retry(lambda: self.db.execute(SAVE_RECORD_SQL, args))

    def load_records(self) -> Iterator[StoredRecord]:
        for row in self.db.query("select key, hlc, origin, value from records"):
            yield StoredRecord(row["key"], row["hlc"], row["origin"], unpack_value(row["value"]))

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        """One transaction for the whole batch: one fsync and one hold of the shared file's write lock."""
        rows = [session_row(entry) for entry in sessions]

        def run() -> None:
            conn = self.db.conn
            conn.execute("begin immediate")
            try:
                conn.executemany(SAVE_SESSION_SQL, rows)
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")
        if rows:
            with_retry(run, RETRY_S)

    def load_sessions(self, now_ms: int) -> Iterator[StoredSession]:
        query = "select kind, key, hlc, origin, value, expires from sessions where expires = 0 or expires > ?"
        for row in self.db.query(query, [now_ms]):
            yield StoredSession(row["kind"], row["key"], row["hlc"], row["origin"], unpack_value(row["value"]),
                                row["expires"])

    def purge_sessions(self, now_ms: int) -> int:
        cur = with_retry(lambda: self.db.execute("delete from sessions where expires > 0 and expires <= ?",
                                                 [now_ms]), RETRY_S)
        return cur.rowcount

    def close(self) -> None:
        self.db.conn.close()


class SqliteRegistry:
    """One instance per thread: sqlite connections stay on the thread that made them."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)
        self._beats: dict[str, tuple[float, float]] = {}  # id -> (heartbeat_at seen, monotonic s it was first seen)
        with_retry(lambda: self.db.table("clusters").create(
            {"id": str, "bus_endpoint": str, "peer_endpoint": str, "host": str, "pid": int,
             "incarnation": int, "started_at": float, "heartbeat_at": float},
            pk="id", if_not_exists=True))

    def announce(self, row: NodeRow) -> None:
        with_retry(lambda: self.db.table("clusters").upsert(asdict(row), pk="id"), RETRY_S)

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        cur = with_retry(lambda: self.db.execute(
            "update clusters set heartbeat_at = ? where id = ? and incarnation = ?",
            [heartbeat_at, node_id, incarnation]), RETRY_S)
        return cur.rowcount == 1

    def peers(self) -> list[NodeRow]:
        return with_retry(lambda: [NodeRow(**row) for row in self.db.table("clusters").rows], RETRY_S)

    def withdraw(self, node_id: str, incarnation: int) -> None:
        # at shutdown, which must finish within 2 s: a row left behind expires anyway
        with_retry(lambda: self.db.execute("delete from clusters where id = ? and incarnation = ?",
                                           [node_id, incarnation]), 0.5)

    def prune(self, stale_after_s: float) -> list[str]:
        """Delete the rows whose heartbeat this reader has seen unchanged for ``stale_after_s`` (its own clock).

        The delete names the value seen, so a row refreshed in between stays.
        """
        def run() -> list[str]:
            now, stale = time.monotonic(), []
            rows = {r["id"]: r["heartbeat_at"] for r in self.db.query("select id, heartbeat_at from clusters")}
            for node_id in self._beats.keys() - rows.keys():
                del self._beats[node_id]
            for node_id, beat in rows.items():
                seen = self._beats.get(node_id)
                if seen is None or seen[0] != beat:
                    self._beats[node_id] = (beat, now)
                elif now - seen[1] > stale_after_s:
                    cur = self.db.execute("delete from clusters where id = ? and heartbeat_at = ?", [node_id, beat])
                    if cur.rowcount:
                        stale.append(node_id)
                        del self._beats[node_id]
            return stale
        return with_retry(run, RETRY_S)

    def close(self) -> None:
        self.db.conn.close()
