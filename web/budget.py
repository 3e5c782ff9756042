"""The budget demo's data: app records in the ``budget`` namespace, one per entry.

The daemon knows nothing of budgets: an entry is a record keyed
``<username>/<entry id>`` whose value is ``{user, label, cents, created_at}``,
stored, replicated and mirrored like every record.  A username may itself hold
a "/", so an entry counts as a user's only when its value names that user and
its key is exactly ``<that user>/<id>``: a user "alice/x" never shows on alice's page.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from logonmesh.flask import Records

NAMESPACE = "budget"
LABEL_MAX = 80
CENTS_MAX = 10**12


class Refused(ValueError):
    """An entry the demo does not store; ``field`` is the form field to show it beside."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check(label: str, cents: int) -> None:
    """The rules the daemon used to apply to a budget entry, now the app's own (the form checks them first)."""
    if not (0 < len(label) <= LABEL_MAX and label.isprintable() and label == label.strip()):
        raise Refused("label", "A label is 1 to 80 printable characters.")
    if abs(cents) > CENTS_MAX:
        raise Refused("amount", "That amount is too large.")


def add(records: Records, username: str, label: str, cents: int) -> dict[str, Any]:
    """Store one entry as a record (raises Refused, or the mesh's errors); return it as listed."""
    check(label, cents)
    entry_id = uuid.uuid4().hex
    value = {"user": username, "label": label, "cents": cents,
             "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    records.put(f"{username}/{entry_id}", value)
    return {"id": entry_id, **value}


def listing(records: Records, username: str) -> dict[str, Any]:
    """{entries (oldest first), total_cents}: from the web's mirror when it is current, else one round trip."""
    entries = entries_of(username, records.items(f"{username}/"))
    return {"entries": entries, "total_cents": sum(e["cents"] for e in entries)}


def entries_of(username: str, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """A user's entries among (key, value) records, oldest first; anything malformed is skipped."""
    entries = []
    for key, value in items:
        owner, _, entry_id = key.rpartition("/")
        if owner == username and isinstance(value, dict) and value.get("user") == username \
                and isinstance(value.get("cents"), int) and isinstance(value.get("label"), str):
            entries.append({"id": entry_id, **value})
    return sorted(entries, key=lambda e: (str(e.get("created_at", "")), e["id"]))
