"""What the replica asks the shell to do: small frozen values, one per kind of side effect.

The replica (``replica.py``) decides; the daemon (``node.py``) executes.  An
effect names a peer by its node name, never by a socket, so a test can read a
list of effects the way it would read a log of what the node did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Publish:
    """Sign and publish a message on the bus (heartbeats and merges)."""

    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Send:
    """Send a message to one peer's router, over our DEALER to it."""

    peer: str
    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the peer-socket request being handled, on our ROUTER."""

    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Follow:
    """Connect our SUB to a peer's bus endpoint."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class Unfollow:
    """Disconnect our SUB from a bus endpoint that no live peer has any more."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class OpenDealer:
    """(Re)open the DEALER to a peer's router; any older one to that peer is closed first."""

    peer: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class CloseDealer:
    """Close the DEALER to a peer that is forgotten."""

    peer: str


@dataclass(frozen=True, slots=True)
class RefreshRow:
    """Worker job: touch our registry row; the answer goes to ``Replica.refreshed``."""


@dataclass(frozen=True, slots=True)
class PollRegistry:
    """Worker job: prune stale rows and read the registry; the answer goes to ``Replica.polled``."""


@dataclass(frozen=True, slots=True)
class Rejoin:
    """Worker job: announce our row again (and give a forgetful store back its users)."""


@dataclass(frozen=True, slots=True)
class AdoptUsers:
    """Worker job: read the users ``node`` stored; the answer goes to ``Replica.adopted``."""

    node: str


Effect = (Publish | Send | Reply | Follow | Unfollow | OpenDealer | CloseDealer
          | RefreshRow | PollRegistry | Rejoin | AdoptUsers)
