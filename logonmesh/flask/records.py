"""An app's own replicated data: small values under a namespace and a key, on every node.

Each record is an entry of kind ``r`` (app records): durable in the cluster's
store, replicated and repaired like users, last-writer-wins per key, and
mirrored by the web, so ``get`` and ``items`` cost no round trip.  Values are
anything msgpack can carry, at most 4096 bytes packed; keys 1 to 200
characters; a namespace 1 to 64 of ``a-z 0-9 _ . -``.
"""

from __future__ import annotations

from typing import Any

from logonmesh.daemon.kinds import record_problem
from logonmesh.flask.errors import Refused
from logonmesh.flask.mirror import UNKNOWN
from logonmesh.flask.state import MeshState


class Records:
    """``mesh.records(namespace)``: put, get, delete and items of one namespace."""

    def __init__(self, state: MeshState, namespace: str) -> None:
        problem = record_problem(namespace, "x")
        if problem:
            raise Refused(problem[1], problem[0])
        self._state = state
        self.namespace = namespace

    def put(self, key: str, value: Any) -> None:
        """Store durably and replicate; raises Refused (invalid, too_large) or MeshUnavailable."""
        self._check(key, value)
        written = self._state.call("record_put", namespace=self.namespace, key=key, value=value)
        self._state.mirror.record_written(written)

    def delete(self, key: str) -> None:
        """A tombstone, durable like a value: a restart or a repair cannot bring the record back."""
        self._check(key)
        written = self._state.call("record_delete", namespace=self.namespace, key=key)
        self._state.mirror.record_written(written)

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` when there is none (or it was deleted)."""
        self._check(key)
        for found, value in self.items(key):
            if found == key:
                return value
        return default

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """[(key, value)] of the live records whose key starts with prefix, by key: from the mirror when current."""
        held = self._state.mirror.records(self.namespace, prefix)
        if held is not UNKNOWN:
            return list(held)
        answer = self._state.call("record_items", namespace=self.namespace, prefix=prefix)
        return [(item["key"], item["value"]) for item in answer["items"]]

    def _check(self, key: str, value: Any = None) -> None:
        problem = record_problem(self.namespace, key, value)
        if problem:
            raise Refused(problem[1], problem[0])
