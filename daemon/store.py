"""The durable user record: a ``users`` table in the cluster database.

Only the daemon's worker thread calls these functions (never the event loop),
and only at boot, on registration and by repair.  Lookups are served from the
cache so that a partition really is one.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Callable, Iterator, TypeVar

import sqlite_utils

BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")


class UsernameTaken(Exception):
    """The unique constraint on ``users.username`` refused the insert."""


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
    ensure_users(db)


def with_retry(fn: Callable[[], T], seconds: float = BUSY_TIMEOUT_MS / 1000) -> T:
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


def ensure_users(db: sqlite_utils.Database) -> None:
    db["users"].create({"id": str, "username": str, "password_hash": str, "created_at": str},
                       pk="id", not_null={"username", "password_hash", "created_at"}, if_not_exists=True)
    db["users"].create_index(["username"], unique=True, if_not_exists=True)


class UserStore:
    """The users table, for one thread."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)

    def insert(self, user: dict) -> None:
        try:
            self.db["users"].insert(user)
        except sqlite3.IntegrityError:
            raise UsernameTaken(user["username"]) from None

    def load(self) -> Iterator[dict]:
        yield from self.db.query("select id, username, password_hash, created_at from users")

    def close(self) -> None:
        self.db.conn.close()
