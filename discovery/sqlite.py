"""The ``clusters`` table in a shared SQLite file, through sqlite-utils."""

from __future__ import annotations

from dataclasses import asdict

from daemon.store import open_db, with_retry
from discovery import NodeRow



class SqliteRegistry:
    """One instance per thread: sqlite connections stay on the thread that made them."""

    def __init__(self, path: str) -> None:
        self.db = open_db(path)
        with_retry(lambda: self.db["clusters"].create(
            {"id": str, "bus_endpoint": str, "peer_endpoint": str, "host": str, "pid": int,
             "incarnation": int, "started_at": float, "heartbeat_at": float},
            pk="id", if_not_exists=True))

    def announce(self, row: NodeRow) -> None:
        self.db["clusters"].upsert(asdict(row), pk="id")

    def refresh(self, node_id: str, incarnation: int, heartbeat_at: float) -> bool:
        cur = self.db.execute("update clusters set heartbeat_at = ? where id = ? and incarnation = ?",
                              [heartbeat_at, node_id, incarnation])
        return cur.rowcount == 1

    def peers(self) -> list[NodeRow]:
        return [NodeRow(**row) for row in self.db["clusters"].rows]

    def withdraw(self, node_id: str, incarnation: int) -> None:
        self.db.execute("delete from clusters where id = ? and incarnation = ?", [node_id, incarnation])

    def prune(self, stale_before: float) -> list[str]:
        ids = [r["id"] for r in self.db.query("select id from clusters where heartbeat_at < ?",
                                              [stale_before])]
        if ids:
            self.db.execute("delete from clusters where heartbeat_at < ?", [stale_before])
        return ids

    def close(self) -> None:
        self.db.conn.close()
