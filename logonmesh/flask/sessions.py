"""A person's sessions across the cluster: the device they came from, the signals an app can follow
(sessions here, peers in ``peerwatch``).

What a person sees of a session is its public id (a hash of the token, which
cannot be used as one), the node that made it, when, when last used, and a
few words about the device, made here from the User-Agent so the daemon
never parses headers.  The signals are blinker's, as Flask's own are: an app
connects a receiver to learn that a session started, ended or was revoked.
"""

from __future__ import annotations

import re

from blinker import Namespace

DEVICE_MAX = 60  # the daemon's limit (daemon.kinds.DEVICE_MAX): longer is refused

_signals = Namespace()
session_started = _signals.signal("logonmesh.session-started")    # sender: the app; username, session_id
session_ended = _signals.signal("logonmesh.session-ended")        # a logout: username, session_id
session_revoked = _signals.signal("logonmesh.session-revoked")    # mesh.revoke: username, session_ids
peer_up = _signals.signal("logonmesh.peer-up")                    # node: a peer this daemon now sees up
peer_down = _signals.signal("logonmesh.peer-down")                # node: down, or left the cluster

# (pattern, name): the first that matches names it, so the more specific come first
_BROWSERS = [(r"Edg(?:e|A|iOS)?/", "Edge"), (r"OPR/|Opera", "Opera"), (r"Firefox/|FxiOS/", "Firefox"),
             (r"Chrome/|CriOS/", "Chrome"), (r"Safari/", "Safari"), (r"curl/", "curl"),
             (r"python-requests|python-urllib|httpx", "Python")]
_SYSTEMS = [(r"iPhone|iPad|iOS", "iOS"), (r"Android", "Android"), (r"Windows", "Windows"),
            (r"Mac OS X|Macintosh", "macOS"), (r"CrOS", "ChromeOS"), (r"Linux", "Linux")]


def device_of(user_agent: str | None) -> str:
    """A short, printable description of a User-Agent: "Firefox on Linux", else its first printable words."""
    agent = user_agent or ""
    browser = next((name for pattern, name in _BROWSERS if re.search(pattern, agent)), None)
    system = next((name for pattern, name in _SYSTEMS if re.search(pattern, agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or system or ""
    printable = "".join(ch for ch in agent if ch.isprintable()).strip()
    return printable[:DEVICE_MAX] or "unknown device"
