"""Finding the other nodes of a cluster.

A registry holds one row per live node.  The daemon needs only four things
from it, so every backend (SQLite today, Redis for clusters that span hosts)
implements this small interface and nothing above it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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


class Registry(Protocol):
    def announce(self, row: NodeRow) -> None:
        """Insert or replace this node's row."""

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        """Touch this node's row; False when the row is gone (then announce again)."""

    def peers(self) -> list[NodeRow]:
        """Every row, this node's included."""

    def withdraw(self, node_id: str, incarnation: int) -> None:
        """Remove this node's row, on a clean shutdown."""

    def close(self) -> None:
        """Release the connection."""

    def prune(self, stale_before: float) -> list[str]:
        """Delete rows whose heartbeat is older than ``stale_before``; returns their ids."""


def open_registry(url: str, row_ttl_ms: int | None = None) -> Registry:
    """The registry named by the --db setting: a path, sqlite:///path, or redis://host:port/N[?prefix=P].

    ``row_ttl_ms`` is the daemon's stale limit.  Redis expires a row after it
    unless a heartbeat refreshes it; SQLite keeps rows until ``prune``.
    """
    if url.startswith(("redis://", "rediss://")):
        from logonmesh.discovery.redis import RedisRegistry
        return RedisRegistry(url, row_ttl_ms)
    from logonmesh.discovery.sqlite import SqliteRegistry
    path = url[len("sqlite:///") - 1:] if url.startswith("sqlite:///") else url
    return SqliteRegistry(path)
