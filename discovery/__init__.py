"""The cluster database: where nodes find each other and where users are kept for good.

Two backends hold it, one module each: ``sqlite`` (a shared file, for the
nodes of one host) and ``redis`` (for clusters that span hosts).  Each module
holds that backend's *registry* (the ``clusters`` table: one row per live
node) and its durable *store* (users, and whatever else must outlive every
daemon).  This module is the only place that turns a ``--db`` setting into a
backend, and the small interface below is all the daemon sees, so nothing
above it changes with the backend.

This package sits below the daemon: it imports nothing of ``logonmesh.daemon``
(a layers contract in CI says so), and a backend's client library is imported
only when that backend is opened, so the CLI's start-up stays free of it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Protocol, cast

NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")  # a node's name: in rows, in frames, in file names
BACKENDS = {"sqlite": "logonmesh.discovery.sqlite", "redis": "logonmesh.discovery.redis",
            "rediss": "logonmesh.discovery.redis"}
SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class NodeRow:
    id: str
    bus_endpoint: str
    peer_endpoint: str
    host: str
    pid: int
    incarnation: int
    started_at: float
    heartbeat_at: float


class StoredRecord(NamedTuple):
    """An app record as the store keeps it, its version with it, so a node that boots from the store
    rebuilds the same cache entry (and the same digest).  ``key`` is ``<namespace>/<key>``; a value of
    None is a deletion, kept so that an older copy cannot come back."""

    key: str
    hlc: int
    origin: str
    value: Any


class StoredSession(NamedTuple):
    """A session entry as the store keeps it (a daemon session ``s`` or web session data ``d``), with
    its version and its expiry (ms since the epoch in the writing node's clock), so a cluster that was
    stopped whole boots with the same entries.  A value of None is an ending (a logout, a destroyed
    session), kept until it expires so that no older live copy can come back."""

    kind: str
    key: str
    hlc: int
    origin: str
    value: Any
    expires: int


class UsernameTaken(Exception):
    """The store already holds this username (SQLite's unique index, or Redis's key) and refused the insert."""


class StoreUnavailable(ConnectionError):
    """A networked store (Redis) cannot be reached or refused; the message is one line for a person.

    A ConnectionError, hence an OSError: the CLI reports it at start as one
    line, and once running the daemon answers "the user store is unavailable".
    """


class Registry(Protocol):
    """The ``clusters`` table: what the daemon needs to find its peers."""

    def announce(self, row: NodeRow) -> None:
        """Insert or replace this node's row."""

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        """Touch this node's row; False when the row is gone (then announce again)."""

    def peers(self) -> list[NodeRow]:
        """Every row, this node's included."""

    def withdraw(self, node_id: str, incarnation: int) -> None:
        """Remove this node's row, on a clean shutdown."""

    def prune(self, stale_after_s: float) -> list[str]:
        """Delete rows whose heartbeat has not changed for ``stale_after_s`` seconds; returns their ids.

        "Changed", not "older than": a row's ``heartbeat_at`` comes from its
        writer's clock, which may be minutes off ours, so staleness is judged
        by how long this reader has seen the same value (its monotonic clock).
        """

    def close(self) -> None:
        """Release the connection."""


class Store(Protocol):
    """The durable record (users, the apps' records), whatever holds it."""

    def insert(self, user: dict, node: str) -> None:
        """Store a new user atomically, noting which node wrote it; raise UsernameTaken if the name exists."""

    def written_by(self, node: str) -> Iterator[dict]:
        """The users a node wrote: what the others adopt when that node vanishes for good."""

    def load(self) -> Iterator[dict]:
        """Every user (id, username, password_hash, created_at), read in pages."""

    def restore(self, users: list[dict]) -> int:
        """Write back users the store lost (a Redis without persistence restarted); returns how many."""

    def save_record(self, record: StoredRecord) -> None:
        """Store a record (deletions too) unless the store holds a higher (hlc, origin) of its key.

        A write that lost last-writer-wins in the mesh loses it in the store as
        well, whatever order the writes land in.
        """

    def load_records(self) -> Iterator[StoredRecord]:
        """Every stored record, deletions included."""

    def save_sessions(self, sessions: list[StoredSession]) -> None:
        """Store a batch of session entries in one round trip, each by the sessions' lattice.

        An ending beats every live version of its key whatever the versions;
        between two live entries, or two endings, the higher (hlc, origin)
        wins.  A kept ending takes the later of the two expiries, so it
        outlives every copy it defeated.  So an older write never replaces a
        newer row, whichever node writes last.
        """

    def load_sessions(self, now_ms: int) -> Iterator[StoredSession]:
        """Every stored session entry that has not expired by ``now_ms``, endings included."""

    def purge_sessions(self, now_ms: int) -> int:
        """Delete the session entries expired by ``now_ms``; returns how many went (0 where the store expires
        them itself)."""

    def close(self) -> None:
        """Release the connection."""


@dataclass
class Backend:
    """One thread's connections to the cluster database (connections stay on the thread that made them)."""

    registry: Registry
    store: Store

    def close(self) -> None:
        self.registry.close()
        self.store.close()


def scheme(url: str) -> str:
    """The backend a ``--db`` setting names: "sqlite" for a path or sqlite:///path, else the URL's scheme."""
    return url.split("://", 1)[0].lower() if "://" in url else "sqlite"


class BackendModule(Protocol):
    """What each backend module offers; ``check_url`` only the networked ones (SQLite's is a path)."""

    def open_registry(self, url: str, row_ttl_ms: int | None = None) -> Registry: ...

    def open_store(self, url: str) -> Store: ...

    def check_url(self, url: str) -> str: ...


def _module(url: str) -> BackendModule:
    name = BACKENDS.get(scheme(url))
    if name is None:
        raise ValueError(f"must be a path, sqlite:///path or redis://host:port/N, got {url!r}")
    # imported by name so a backend's client library loads only when it is used
    return cast(BackendModule, importlib.import_module(name))


def normalise(raw: str) -> str:
    """Check a ``--db`` setting now, not at the first query; a file becomes an absolute path.

    Raises ValueError with a message for a person.
    """
    if not raw:
        raise ValueError("must not be empty")
    _module(raw)  # an unknown scheme fails here
    if scheme(raw) != "sqlite":
        return _module(raw).check_url(raw)
    path = raw[len(SQLITE_PREFIX) - 1:] if raw.startswith(SQLITE_PREFIX) else raw
    return os.path.abspath(path)


def is_networked(url: str) -> bool:
    """True for a store on the network (Redis): its setting is no file path, and it can forget."""
    return scheme(url) != "sqlite"


def file_path(url: str) -> str | None:
    """The file a SQLite setting names, None for a networked store."""
    if is_networked(url):
        return None
    return url[len(SQLITE_PREFIX) - 1:] if url.startswith(SQLITE_PREFIX) else url


def missing_folder(url: str) -> str | None:
    """The folder a SQLite setting's file would live in, when that folder does not exist (else None).

    A mistyped ``--db`` must not quietly start a new, isolated cluster with
    a cookie of its own: the caller refuses it unless it is the default.
    Something that exists but is no folder is left to the open, which says so.
    """
    path = file_path(url)
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    return None if os.path.lexists(folder) else folder


def open_registry(url: str, row_ttl_ms: int | None = None) -> Registry:
    """The registry named by the --db setting.

    ``row_ttl_ms`` is the daemon's stale limit.  Redis expires a row after it
    unless a heartbeat refreshes it; SQLite keeps rows until ``prune``.
    """
    return _module(url).open_registry(url, row_ttl_ms)


def open_store(url: str) -> Store:
    """The durable store named by the --db setting."""
    return _module(url).open_store(url)


def open_backend(url: str, row_ttl_ms: int | None = None) -> Backend:
    """Registry and store for one thread; if the store cannot open, the registry is closed again."""
    registry = open_registry(url, row_ttl_ms)
    try:
        return Backend(registry, open_store(url))
    except BaseException:
        registry.close()
        raise
