"""What the inspection subcommands share: options, finding a daemon, the registry, output.

A subcommand talks to "the local or named daemon": ``--node NAME``, else the
``--name`` / LOGONMESH_NODE setting, else the first daemon whose socket is in
the run dir.  Every way of not reaching it ends here, as one line and exit 2,
so that the subcommands themselves only deal with answers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, NoReturn, Sequence, overload

import click

from logonmesh.daemon import config
from logonmesh.commands.options import fail, load_settings, setting_options

CALL_TIMEOUT_MS = 2000
WIDTH = 80


# ---- options ------------------------------------------------------------------

def inspect_options(fn: Callable) -> Callable:
    """The shared settings (--db, --cookie, --run-dir, ...) and --json, on every inspection subcommand."""
    fn = click.option("--json", "as_json", is_flag=True, help="print JSON (NDJSON for streams) instead of tables")(fn)
    return setting_options("shared")(fn)


def node_option(multiple: bool = False) -> Callable:
    help_ = ("only these daemons (repeat the option); default: every node in the clusters table" if multiple
             else "the daemon to ask; default: --name / LOGONMESH_NODE, else the first daemon in the run dir")
    return click.option("--node", "node", metavar="NAME", multiple=multiple, callback=_check_names, help=help_)


def _check_names(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    for name in ([value] if isinstance(value, str) else value or []):
        if not config.NAME_RE.match(name):
            raise click.BadParameter(f"{name!r} is not a node name ([a-z0-9_-]{{1,32}})")
    return value


def split_settings(values: dict[str, Any]) -> tuple[config.Settings, dict[str, Any]]:
    """Separate the shared settings from the subcommand's own arguments."""
    ours = {k: v for k, v in values.items() if k not in config.OPTIONS_BY_NAME}
    return load_settings(values), ours


# ---- the cluster's files --------------------------------------------------------

def shown(path: str) -> str:
    """A path as the user would type it: relative when under the working directory."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def cookie(settings: config.Settings) -> bytes:
    """The cluster secret, without ever creating a cookie file (a tool must not invent one)."""
    if settings.cookie:
        return settings.cookie.encode()
    if config.is_networked(settings.db):  # a Redis cluster has no cookie file to fall back on
        fail("no cluster cookie: set --cookie / LOGONMESH_COOKIE (required when --db is a URL)")
    path = os.path.join(os.path.dirname(settings.db), "cookie")
    if not os.path.exists(path):
        fail(f"no cluster cookie: set --cookie / LOGONMESH_COOKIE (there is no file {shown(path)})")
    try:
        return config.resolve_cookie(settings)
    except (OSError, config.ConfigError) as exc:
        fail(f"cannot read the cluster cookie: {exc}")


def secure(settings: config.Settings, cookie_: bytes, sock: Any) -> None:
    """Make a socket that dials a node's tcp endpoint speak CURVE, when the cluster does (--curve)."""
    if not settings.curve:
        return
    from logonmesh.daemon.curve import Curve  # only then: it pulls in zmq.auth
    try:
        Curve.from_cookie(cookie_, True).client(sock)
    except RuntimeError as exc:
        fail(str(exc))


def running_daemons(settings: config.Settings) -> list[str]:
    """Names of the daemons whose control socket is in the run dir, sorted."""
    try:
        files = os.listdir(settings.run_dir)
    except FileNotFoundError:
        return []
    names = (f[:-4] for f in files if f.endswith(".ipc"))
    return sorted(n for n in names if config.NAME_RE.match(n))


def ipc_of(settings: config.Settings, name: str) -> str:
    return config.ipc_path(settings.run_dir, name)


TABLE_HINT = "it has no row in the clusters table: is --db the cluster's database?"


def unknown_node(names: Sequence[str], known: Iterable[str], hint: str) -> NoReturn:
    """The one wording for a node name we know nothing of: which names we do know, and where we looked."""
    fail(f"unknown node {', '.join(names)} (known: {', '.join(sorted(known)) or 'none'}); {hint}")


def no_daemon(settings: config.Settings, name: str) -> NoReturn:
    """No socket for ``name`` here: an unknown name, or a node whose daemon runs elsewhere or not at all."""
    socket_ = f"no socket at {shown(ipc_of(settings, name))}"
    running = running_daemons(settings)
    registered = _registered(settings)
    if name in registered:
        fail(f"no daemon is running for node {name} here ({socket_}); it is in the clusters table: "
             "is it stopped, or on another host?")
    unknown_node([name], set(running) | registered, f"it has no row in the clusters table and {socket_}")


def _registered(settings: config.Settings) -> set[str]:
    """Names in the clusters table, or none when there is no table to read (a hint must not fail)."""
    from logonmesh.discovery import file_path, open_registry
    path = file_path(settings.db)
    if path is not None and not os.path.exists(path):
        return set()
    try:
        registry = open_registry(settings.db)
        try:
            return {r.id for r in registry.peers()}
        finally:
            registry.close()
    except Exception:  # sqlite3, or another backend's error: this is only a hint
        return set()


def pick_node(settings: config.Settings, node: str | None) -> tuple[str, str]:
    """(name, how it was chosen) of the daemon to ask; exit 2 when there is none."""
    if node:
        chosen, how = node, "--node"
    elif settings.name:
        chosen, how = settings.name, "--name / LOGONMESH_NODE"
    else:
        running = running_daemons(settings)
        if not running:
            fail(f"no daemon is running (no socket in {shown(settings.run_dir)}); "
                 "start one with 'logonmesh daemon --name NAME', or point --run-dir at its run dir")
        chosen, how = running[0], f"first daemon in {shown(settings.run_dir)}"
    if not os.path.exists(ipc_of(settings, chosen)):
        no_daemon(settings, chosen)
    return chosen, how


class Unreachable(Exception):
    """A daemon could not be asked, or refused; the message is one line for a person.

    ``code`` is the daemon's error code when it refused (``wire.ERROR_CODES``), "wrong_cookie" when it
    answered but not with our cookie, else "unreachable".
    """

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code


def ask(settings: config.Settings, name: str, op: str, **args: Any) -> Any:
    """One request to a daemon; raise Unreachable with a one-line reason."""
    from logonmesh.daemon.client import DaemonClient, DaemonError, DaemonUnavailable, WrongCookie
    path = ipc_of(settings, name)
    if not os.path.exists(path):
        raise Unreachable(f"no daemon is running for node {name} (no socket at {shown(path)})")
    client = DaemonClient(path, cookie(settings), name="cli", timeout_ms=CALL_TIMEOUT_MS)
    try:
        return client.call(op, **args)
    except WrongCookie:
        raise Unreachable(f"wrong cookie: the daemon of node {name} answered, but not with our cookie "
                          f"(socket {shown(path)}; check --cookie / LOGONMESH_COOKIE)", "wrong_cookie") from None
    except DaemonUnavailable as exc:
        if "did not answer" in str(exc):
            raise Unreachable(f"the daemon of node {name} did not answer within {CALL_TIMEOUT_MS} ms "
                              f"(socket {shown(path)}; paused or overloaded?)") from None
        raise Unreachable(f"node {name}: {exc}") from None
    except DaemonError as exc:
        raise Unreachable(f"node {name} refused {op}: {exc} ({exc.code})", exc.code) from None
    finally:
        client.close()


def call(settings: config.Settings, name: str, op: str, **args: Any) -> Any:
    """Like ask, but a failure ends the command: one line, exit 2."""
    try:
        return ask(settings, name, op, **args)
    except Unreachable as exc:
        fail(str(exc))


def registry_rows(settings: config.Settings) -> list:
    """Every row of the clusters table (NodeRow), sorted by name; exit 2 when there is no database."""
    from logonmesh.discovery import file_path, open_registry
    url = settings.db
    path = file_path(url)
    if path is not None and not os.path.exists(path):
        fail(f"no cluster database at {shown(path)} (set --db or LOGONMESH_DB)")
    try:
        registry = open_registry(url)
        try:
            return sorted(registry.peers(), key=lambda r: r.id)
        finally:
            registry.close()
    except Exception as exc:  # sqlite3, or another backend's error: one line either way
        where = f"the clusters table in {shown(path)}" if path is not None else "the registry"
        fail(f"cannot read {where}: {exc}")


# ---- output -----------------------------------------------------------------------

def emit_json(obj: Any) -> None:
    """One JSON document per line: a whole answer, or one event of a stream (NDJSON)."""
    click.echo(json.dumps(obj, default=_jsonable, separators=(",", ":")))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """Plain left-aligned columns, two spaces apart: readable at 80 columns, greppable, no dependency."""
    body = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = [headers] + body
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def pairs(items: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Label and value per line, the values aligned."""
    width = max(len(label) for label, _ in items)
    return "\n".join(f"{indent}{label.ljust(width)}  {_cell(value)}" for label, value in items)


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


@overload
def ago(seconds: float) -> str: ...


@overload
def ago(seconds: None) -> None: ...


def ago(seconds: float | None) -> str | None:
    """A short age: 80ms, 4.2s, 3m10s, 2h05m."""
    if seconds is None:
        return None
    if seconds < 1:
        return f"{max(0, seconds) * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def clock(t: float | None = None) -> str:
    """Local wall time to the millisecond, the first column of every stream."""
    t = time.time() if t is None else t
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def version_text(hlc: int) -> str:
    """A hybrid logical clock as the time it stands for, plus its counter."""
    from logonmesh.daemon.hlc import COUNTER_BITS
    wall = datetime.fromtimestamp((hlc >> COUNTER_BITS) / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{wall}+{hlc & ((1 << COUNTER_BITS) - 1)}"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def note(message: str) -> None:
    """A line for the person, not for a pipe: stderr."""
    click.echo(message, err=True)


def out(line: str = "") -> None:
    """One line to stdout; a closed pipe (``| head``) ends the command quietly with 0."""
    try:
        click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_exit()


def _quiet_exit() -> None:
    try:
        sys.stdout = open(os.devnull, "w")
    finally:
        os._exit(0)


@dataclass
class Stop:
    """Counts what a stream printed, to stop after --count."""

    limit: int | None
    seen: int = 0

    def one(self) -> bool:
        self.seen += 1
        return self.limit is not None and self.seen >= self.limit
