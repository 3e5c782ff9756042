"""What the signed Flask session may hold: the daemon's session token and a local return path.

(Flask-WTF adds its CSRF state itself.)  The session cookie is shared by every
node, so nothing node-specific belongs in it, and nothing a user could use to
leave the site: a return path is kept and followed only if it is local.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import request, session

from web.node import daemon

TOKEN = "token"
RETURN_PATH = "next"


def is_local_path(target: str | None) -> bool:
    """True only for a path on this site: '/x', never '//host', '/\\host' or 'scheme:…'.

    Browsers treat a backslash like a slash and drop tabs and newlines from a
    URL, so any of those, or any other control character, disqualifies it.
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return False
    if "\\" in target or not target.isprintable():
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def remember_return_path(target: str | None) -> None:
    if is_local_path(target):
        session[RETURN_PATH] = target


def pop_return_path() -> str | None:
    """The remembered path, checked again on the way out in case an older cookie holds a bad one."""
    target = session.pop(RETURN_PATH, None)
    return target if is_local_path(target) else None


def requested_path() -> str:
    query = request.query_string.decode("latin-1")
    return f"{request.path}?{query}" if query else request.path


def current_session() -> dict[str, Any] | None:
    """Ask the daemon about the token on every request, so a logout anywhere counts at once."""
    token = session.get(TOKEN)
    if not token:
        return None
    found = daemon().call("session_resolve", token=token)
    if found is None:
        session.pop(TOKEN, None)
    return found


def start_session(username: str) -> None:
    """A fresh daemon token on every login; the one it replaces is revoked so it cannot be replayed."""
    old = session.get(TOKEN)
    created = daemon().call("session_create", username=username)
    session[TOKEN] = created["token"]
    if old and old != created["token"]:
        daemon().call("session_revoke", token=old)


def end_session() -> None:
    """Revoke first: if the daemon is down this raises, and the cookie keeps its token for a retry."""
    token = session.get(TOKEN)
    if token:
        daemon().call("session_revoke", token=token)
    session.pop(TOKEN, None)
    session.pop(RETURN_PATH, None)
