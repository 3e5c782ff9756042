"""What one app's logonmesh holds (``app.extensions["logonmesh"]``): settings, the daemon link, the mirror.

Every node of a cluster derives the same keys from the cluster cookie, so a
browser's session cookie (which ignores the port) is accepted by every node.
The daemon's errors arrive here as codes and leave as ``logonmesh.flask``
errors, so an app never sees the daemon's client or its exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Callable, Mapping

from flask import Flask

from logonmesh.daemon import config
from logonmesh.daemon.client import DaemonClient, DaemonError, DaemonUnavailable
from logonmesh.flask.errors import MeshError, MeshUnavailable, Refused, UsernameTaken
from logonmesh.flask.link import DaemonLink
from logonmesh.flask.mirror import SessionMirror
from logonmesh.flask.peerwatch import PeerWatch
from logonmesh.flask.tally import Tally
from logonmesh.flask.throttle import Limits

DAEMON_TIMEOUT_MS = 1000  # one slow daemon call must leave room for a 503 within 2 s
KEY_CONTEXT = b"logonmesh/web/v1"
EXTENSION = "logonmesh"


def derive_key(cookie: bytes, context: bytes = KEY_CONTEXT) -> bytes:
    """A key for one purpose, derived so that a leaked web key does not reveal the wire key."""
    return hmac.new(cookie, context, hashlib.sha256).digest()


def mirror_staleness(settings: config.Settings) -> float:
    """Trust the session mirror for a heartbeat and a half past the last tick (the daemon ticks each beat).

    That bounds how long a frozen daemon can leave a logout elsewhere unseen,
    and stays under the 2 s in which a dead daemon must turn into a 503; the
    floor of 0.5 s keeps a busy machine's late tick from untrusting the mirror.
    """
    return min(max(1.5 * settings.heartbeat_ms / 1000 + 0.1, 0.5), 1.8)


def settings_for(app: Flask, environ: Mapping[str, str] | None = None) -> config.Settings:
    """The node's settings: the one settings table, from app.config (the LOGONMESH_* names) over the environment."""
    env = dict(os.environ if environ is None else environ)
    names = {opt.env for opt in config.OPTIONS}
    env.update({k: str(v) for k, v in app.config.items() if k in names and v is not None})
    return config.load(environ=env, require_name=True)


class MeshState:
    """The per-app state of the extension, and the one way its parts reach the daemon."""

    def __init__(self, settings: config.Settings, client: DaemonClient | None = None) -> None:
        cookie = config.resolve_cookie(settings)
        self.settings = settings
        self.node = settings.require_name()
        self.cookie_key = derive_key(cookie)
        self.link = DaemonLink(client or DaemonClient(settings.ipc_path, cookie, name=f"web-{self.node}",
                                                      timeout_ms=DAEMON_TIMEOUT_MS))
        self.mirror = SessionMirror(settings.feed_path, settings.ipc_path, cookie, self.link.client,
                                    stale_after_s=mirror_staleness(settings),
                                    step_threshold_ms=settings.max_clock_offset_ms)
        self.limits = Limits(settings.throttle_user, settings.throttle_addr, settings.throttle_window_s)
        self.idle_s, self.absolute_s = settings.session_idle_s, settings.session_ttl_s
        self.logins = Tally()  # (outcome,): "success", "failure" or "throttled" (a 429)
        self.peers = PeerWatch(lambda: DaemonClient(settings.ipc_path, cookie, name=f"web-{self.node}-peers",
                                                    timeout_ms=DAEMON_TIMEOUT_MS), settings.heartbeat_ms / 1000)

    def start(self, on_give_up: Callable[[int], None] | None = None) -> None:
        """Follow the daemon's feed now, so the mirror is warm before the first request (the web server calls it).

        ``on_give_up`` is how the server stops when the mirror's thread gives up (else SIGTERM).
        """
        if on_give_up is not None:
            self.mirror.on_give_up = on_give_up
        self.mirror.start()
        self.peers.start()

    def close(self) -> None:
        self.peers.close()
        self.mirror.close()
        self.link.close()

    def call(self, op: str, timeout_ms: int | None = None, **args: Any) -> Any:
        """One daemon op; its failures become the extension's errors, by code."""
        try:
            return self.link.call(op, timeout_ms=timeout_ms, **args)
        except DaemonUnavailable as exc:
            raise MeshUnavailable(f"the daemon of node {self.node} is not answering ({exc})") from None
        except DaemonError as exc:
            raise mesh_error(exc) from None


def mesh_error(exc: DaemonError) -> MeshError:
    """A daemon's refusal as the error an app can catch, by its code (docs/wire.md lists them)."""
    if exc.code == "taken":
        return UsernameTaken()
    if exc.code == "store_unavailable":
        return MeshUnavailable("the cluster's user store cannot be reached right now", "store_unavailable")
    if exc.code in ("invalid", "too_large"):
        return Refused(str(exc), exc.code)
    return MeshError(str(exc), exc.code or "internal")
