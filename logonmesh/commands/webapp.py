"""Find the Flask app a node's web process serves: ``--app MODULE:FACTORY``, as ``flask --app`` finds one.

Why the working directory goes first on ``sys.path``: ``myapp:create_app``
must import the ``myapp.py`` beside the Procfile (or the test), and that
module's own imports (a package of the user's called ``web``, say) must find
the user's packages, never ours; ours all live under ``logonmesh.``, so
nothing we import can shadow them.  Why the settings are exported: the app's
own ``LogonMesh(app)`` reads the ``LOGONMESH_*`` environment, and must see
what this command resolved from its flags, not only what the shell had.

Every way the app can fail to load (no module, no attribute, a factory that
raises or returns something else) is an ``AppLoadError`` whose message is
one line for a person: the command prints it and exits 2, no traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, MutableMapping

from logonmesh.daemon import config

if TYPE_CHECKING:
    from flask import Flask


class AppLoadError(Exception):
    """The app named by --app cannot be had; the message says why, in one line."""


def environ_of(settings: config.Settings, port: int) -> dict[str, str]:
    """The settings as LOGONMESH_* variables that ``config.load`` reads back to the same values.

    The port is the one resolved (from --port, <NAME>_PORT or PORT); a setting
    without a value (no --cookie: the cookie file decides) is left out.
    """
    out: dict[str, str] = {}
    for opt in config.OPTIONS:
        value = port if opt.name == "port" else getattr(settings, opt.name)
        if value is None:
            continue
        out[opt.env] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return out


def prepare(settings: config.Settings, port: int, environ: MutableMapping[str, str] | None = None,
            cwd: str | None = None) -> None:
    """Before the app is imported: the working directory first on sys.path, the settings in the environment."""
    here = os.path.abspath(cwd or os.getcwd())
    if sys.path[:1] != [here]:
        sys.path.insert(0, here)
    importlib.invalidate_caches()
    (os.environ if environ is None else environ).update(environ_of(settings, port))


def load_app(spec: str) -> Flask:
    """Import MODULE, call its FACTORY with no arguments, and check that it made a Flask app.

    A Flask app named directly (``myapp:app``) is taken as it is, as
    ``flask --app`` does.  Only ``Exception`` is caught: SystemExit (a SIGTERM
    during start-up) and KeyboardInterrupt must go on.
    """
    from flask import Flask
    module_name, _, attr = spec.partition(":")
    module = _import(module_name)
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"module '{module_name}' ({_where(module)}) has no attribute '{attr}'") from None
    if isinstance(target, Flask):
        return target
    if not callable(target):
        raise AppLoadError(f"'{attr}' is {_a(target)}, not a Flask app factory")
    try:
        app = target()
    except config.ConfigError as exc:
        raise AppLoadError(str(exc)) from None
    except Exception as exc:
        raise AppLoadError(f"{attr}() raised {_describe(exc)}") from None
    if not isinstance(app, Flask):
        raise AppLoadError(f"{attr}() returned {_a(app)}, not a Flask app")
    return app


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppLoadError(f"no module named '{exc.name}' in {sys.path[0]} or the installed packages") \
                from None
        raise AppLoadError(f"importing '{name}' raised {_describe(exc)}") from None
    except Exception as exc:  # a SyntaxError, or anything the module runs at import
        raise AppLoadError(f"importing '{name}' raised {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """``TypeError: what (myapp.py:12)``: where it was raised, in the user's files if it passed through them."""
    lines = str(exc.msg if isinstance(exc, SyntaxError) else exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines and lines[0] else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({_place(exc.filename)}:{exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and f.filename != __file__]
    if not frames:
        return text
    frame = ([f for f in frames if _theirs(f.filename)] or frames)[-1]
    return f"{text} ({_place(frame.filename)}:{frame.lineno})"


def _theirs(filename: str) -> bool:
    """Under the working directory, which prepare() put first on sys.path: the user's code."""
    return os.path.abspath(filename).startswith(os.path.join(sys.path[0], ""))


def _place(filename: str) -> str:
    """A file of the user's relative to the working directory; any other as it is."""
    return os.path.relpath(filename, sys.path[0]) if _theirs(filename) else filename


def _where(module: Any) -> str:
    return getattr(module, "__file__", None) or "a namespace package"


def _a(value: Any) -> str:
    if value is None:
        return "None"
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
