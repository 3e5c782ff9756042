"""``current_user`` and ``@login_required``: the shapes Flask-Login made familiar, backed by the mesh.

``MeshUser`` has Flask-Login's user interface too (``is_authenticated``,
``is_active``, ``is_anonymous``, ``get_id``), so an app that uses Flask-Login
can hand it to ``login_user`` and return it from its ``user_loader``: see
docs/flask.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, cast

from flask import current_app, g, jsonify, redirect, request, url_for
from werkzeug.local import LocalProxy

from logonmesh.flask import login
from logonmesh.flask.state import EXTENSION, MeshState

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class MeshUser:
    """A logged-in person: their username and user id, on this node."""

    username: str
    id: str
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        return self.id


@dataclass(frozen=True)
class AnonymousUser:
    """Nobody logged in (no session, or one that ended anywhere)."""

    username: None = None
    id: None = None
    is_authenticated: bool = False
    is_active: bool = False
    is_anonymous: bool = True

    def get_id(self) -> None:
        return None


ANONYMOUS = AnonymousUser()


def state() -> MeshState:
    return current_app.extensions[EXTENSION]


def _load_user() -> MeshUser | AnonymousUser:
    """Once per request: the login behind the session, from the mirror (no round trip when it is current)."""
    if "_logonmesh_user" not in g:
        found = login.current_login(state())
        g._logonmesh_user = ANONYMOUS if found is None else MeshUser(found["user"], found["uid"])
    return cast("MeshUser | AnonymousUser", g._logonmesh_user)


def forget_user() -> None:
    """The request's login changed (a login, a logout): look it up again when next asked."""
    g.pop("_logonmesh_user", None)


current_user: Any = LocalProxy(_load_user)


def prefers_json() -> bool:
    """An API client (``Accept: application/json`` over HTML) gets JSON errors, a browser gets pages."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def login_required(view: F) -> F:
    """Without a valid session: 401 JSON for a request that prefers JSON, else a redirect to the login view.

    The redirect remembers where the person was going (a local path only:
    never an open redirect), for ``mesh.return_path()`` after the login.
    """
    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if current_user.is_authenticated:
            return view(*args, **kwargs)
        if prefers_json():
            return jsonify(error="not logged in"), 401
        login.remember_return_path(login.requested_path())
        return redirect(_login_url())
    return cast(F, guarded)


def _login_url() -> str:
    view = current_app.extensions[EXTENSION + ".ext"].login_view
    return view if view.startswith("/") else url_for(view)
