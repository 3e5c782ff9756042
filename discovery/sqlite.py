"""The ``clusters`` table in a shared SQLite file, through sqlite-utils.

Every call retries while the file is locked, for up to ``RETRY_S``: these run
on the daemon's worker thread, where waiting costs nobody a page, and a dozen
daemons refreshing their rows each heartbeat do collide on a busy machine.
"""

from __future__ import annotations

from dataclasses import asdict

from logonmesh.daemon.store import open_db, with_retry
from logonmesh.discovery import NodeRow

RETRY_S = 3.0


class SqliteRegistry:
    """One instance per thread: sqlite connections stay on the thread that made them."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)
        with_retry(lambda: self.db["clusters"].create(
            {"id": str, "bus_endpoint": str, "peer_endpoint": str, "host": str, "pid": int,
             "incarnation": int, "started_at": float, "heartbeat_at": float},
            pk="id", if_not_exists=True))

    def announce(self, row: NodeRow) -> None:
        with_retry(lambda: self.db["clusters"].upsert(asdict(row), pk="id"), RETRY_S)

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        cur = with_retry(lambda: self.db.execute(
            "update clusters set heartbeat_at = ? where id = ? and incarnation = ?",
            [heartbeat_at, node_id, incarnation]), RETRY_S)
        return cur.rowcount == 1

    def peers(self) -> list[NodeRow]:
        return with_retry(lambda: [NodeRow(**row) for row in self.db["clusters"].rows], RETRY_S)

    def withdraw(self, node_id: str, incarnation: int) -> None:
        # at shutdown, which must finish within 2 s: a row left behind expires anyway
        with_retry(lambda: self.db.execute("delete from clusters where id = ? and incarnation = ?",
                                           [node_id, incarnation]), 0.5)

    def prune(self, stale_before: float) -> list[str]:
        def run() -> list[str]:
            ids = [r["id"] for r in self.db.query("select id from clusters where heartbeat_at < ?",
                                                  [stale_before])]
            if ids:
                self.db.execute("delete from clusters where heartbeat_at < ?", [stale_before])
            return ids
        return with_retry(run, RETRY_S)

    def close(self) -> None:
        self.db.conn.close()
