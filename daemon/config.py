"""Every setting of logonmesh, defined once.

The daemon, the web process, the CLI and the test harness all build their
settings here, so a flag, its environment variable and its default can never
disagree between them.  Values are validated in one pass and a bad one is
reported as a single line naming the flag and the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from logonmesh.discovery import NAME_RE, is_networked, missing_folder, normalise

IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one of them the NUL


class ConfigError(ValueError):
    """A setting has a bad value; the message is one line meant for a person."""


def _node_name(raw: str) -> str:
    if not NAME_RE.match(raw):
        raise ValueError(f"must match [a-z0-9_-]{{1,32}}, got {raw!r}")
    return raw


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be above 0, got {value}")
    return value


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError(f"must be a port number (1-65535), got {value}")
    return value


def parse_flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _port_or_zero(raw: str) -> int:
    """A fixed port, or 0 for an ephemeral one (fine on one host; a firewall between hosts needs fixed)."""
    if raw.strip() == "0":
        return 0
    return _port(raw)


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _db(raw: str) -> str:
    """A path, sqlite:///path, or redis://host:port/N[?prefix=P]: checked now, not at the first query."""
    return normalise(raw)


APP_SPEC_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _app_spec(raw: str) -> str:
    """MODULE:FACTORY, checked for its shape now; whether it imports is the web command's to say."""
    if not APP_SPEC_RE.fullmatch(raw):
        raise ValueError(f"must be MODULE:FACTORY (say myapp:create_app), got {raw!r}")
    return raw


WILDCARDS = frozenset({"0.0.0.0", "*", "::", "[::]", ""})


@dataclass(frozen=True)
class Option:
    """One setting: how it is spelled on the command line and in the environment."""

    name: str
    flag: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    scope: str = "shared"  # shared | daemon | web


OPTIONS: tuple[Option, ...] = (
    Option("name", "--name", "LOGONMESH_NODE", None, _node_name, "node name, [a-z0-9_-]{1,32}"),
    Option("db", "--db", "LOGONMESH_DB", "var/cluster.db", _db,
           "the cluster database: a path, sqlite:///path or redis://host:port/N[?prefix=P]"),
    Option("cookie", "--cookie", "LOGONMESH_COOKIE", None, _text,
           "shared cluster secret; default: the file 'cookie' beside a SQLite database (required with redis://)"),
    Option("run_dir", "--run-dir", "LOGONMESH_RUN_DIR", "var/run", _text, "where the ipc sockets live"),
    Option("bind", "--bind", "LOGONMESH_BIND", "127.0.0.1", _text, "interface for the tcp sockets"),
    Option("advertise", "--advertise", "LOGONMESH_ADVERTISE", None, _text,
           "address other hosts use to reach this daemon; default: --bind (127.0.0.1 if --bind is a wildcard)",
           "daemon"),
    Option("bus_port", "--bus-port", "LOGONMESH_BUS_PORT", 0, _port_or_zero,
           "tcp port of the bus (PUB); 0 = ephemeral", "daemon"),
    Option("peer_port", "--peer-port", "LOGONMESH_PEER_PORT", 0, _port_or_zero,
           "tcp port of the peer socket (ROUTER); 0 = ephemeral", "daemon"),
    Option("heartbeat_ms", "--heartbeat-ms", "LOGONMESH_HEARTBEAT_MS", 1000, _positive_int,
           "heartbeat period in milliseconds", "daemon"),
    Option("down_after", "--down-after", "LOGONMESH_DOWN_AFTER", 3, _positive_int,
           "missed heartbeats before a peer is down", "daemon"),
    Option("discovery_ms", "--discovery-ms", "LOGONMESH_DISCOVERY_MS", 2000, _positive_int,
           "how often the clusters table is read, in milliseconds", "daemon"),
    Option("session_ttl_s", "--session-ttl", "LOGONMESH_SESSION_TTL", 86400, _positive_int,
           "session lifetime in seconds", "daemon"),
    Option("max_clock_offset_ms", "--max-clock-offset-ms", "LOGONMESH_MAX_CLOCK_OFFSET_MS", 500, _positive_int,
           "a peer whose clock is further off than this is warned about, and its versions never move "
           "this node's hybrid clock (see SECURITY.md)", "daemon"),
    Option("max_msg_bytes", "--max-msg-bytes", "LOGONMESH_MAX_MSG_BYTES", 64 * 2**20, _positive_int,
           "largest message any socket accepts (ZMQ_MAXMSGSIZE)", "daemon"),
    Option("curve", "--curve", "LOGONMESH_CURVE", False, parse_flag,
           "encrypt and authenticate tcp between nodes with CURVE (keys derived from the cookie)"),
    Option("trace", "--trace", "LOGONMESH_TRACE", False, parse_flag,
           "record when each user merge is published and applied (monotonic ns), for the benchmark; "
           "read and cleared by the ipc op trace", "daemon"),
    Option("ephemeral_sessions", "--ephemeral-sessions", "LOGONMESH_EPHEMERAL_SESSIONS", False, parse_flag,
           "keep sessions and session data in memory only: a restart of every node logs everyone out "
           "(by default they are written behind to the cluster database every 200 ms)", "daemon"),
    Option("session_idle_s", "--session-idle", "LOGONMESH_SESSION_IDLE", 3600, _positive_int,
           "log a session out after this many seconds without a request", "web"),
    Option("throttle_user", "--throttle-user", "LOGONMESH_THROTTLE_USER", 10, _positive_int,
           "failed logins per username per window, cluster-wide, before 429", "web"),
    Option("throttle_addr", "--throttle-addr", "LOGONMESH_THROTTLE_ADDR", 50, _positive_int,
           "failed logins per client address per window, cluster-wide, before 429", "web"),
    Option("throttle_window_s", "--throttle-window", "LOGONMESH_THROTTLE_WINDOW", 60, _positive_int,
           "the login-failure window in seconds", "web"),
    Option("secure_cookies", "--secure-cookies", "LOGONMESH_SECURE_COOKIES", False, parse_flag,
           "mark cookies Secure even when the request did not come over https", "web"),
    Option("host", "--host", "LOGONMESH_HOST", "127.0.0.1", _text, "address the web process listens on", "web"),
    Option("port", "--port", "LOGONMESH_PORT", None, _port,
           "web port; default <NAME>_PORT, then PORT, then 4000", "web"),
    Option("app", "--app", "LOGONMESH_APP", "logonmesh.web:create_app", _app_spec,
           "the Flask app the web process serves: MODULE:FACTORY, the factory called with no arguments, "
           "imported from the working directory first", "web"),
)

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


def _default(name: str) -> Any:
    return OPTIONS_BY_NAME[name].default


@dataclass(frozen=True)
class Settings:
    """Validated settings.  Paths are absolute so that children and tools agree.

    The defaults are OPTIONS' own, so a setting's default is written once.
    """

    name: str | None = _default("name")
    db: str = _default("db")
    cookie: str | None = _default("cookie")
    run_dir: str = _default("run_dir")
    bind: str = _default("bind")
    advertise: str | None = _default("advertise")
    bus_port: int = _default("bus_port")
    peer_port: int = _default("peer_port")
    heartbeat_ms: int = _default("heartbeat_ms")
    down_after: int = _default("down_after")
    discovery_ms: int = _default("discovery_ms")
    session_ttl_s: int = _default("session_ttl_s")
    max_clock_offset_ms: int = _default("max_clock_offset_ms")
    max_msg_bytes: int = _default("max_msg_bytes")
    session_idle_s: int = _default("session_idle_s")
    throttle_user: int = _default("throttle_user")
    throttle_addr: int = _default("throttle_addr")
    throttle_window_s: int = _default("throttle_window_s")
    secure_cookies: bool = _default("secure_cookies")
    curve: bool = _default("curve")
    trace: bool = _default("trace")
    ephemeral_sessions: bool = _default("ephemeral_sessions")
    host: str = _default("host")
    port: int | None = _default("port")
    app: str = _default("app")

    @property
    def ipc_path(self) -> str:
        return ipc_path(self.run_dir, self.require_name())

    @property
    def feed_path(self) -> str:
        """Where this node's daemon publishes the session feed that its web mirrors."""
        return feed_path(self.run_dir, self.require_name())

    def require_name(self) -> str:
        if not self.name:
            raise ConfigError("--name / LOGONMESH_NODE is required")
        return self.name

    @property
    def down_after_ms(self) -> int:
        return self.heartbeat_ms * self.down_after

    @property
    def advertised_host(self) -> str:
        """The host put in the endpoints this daemon announces: other hosts cannot dial 0.0.0.0."""
        if self.advertise:
            return self.advertise
        return "127.0.0.1" if self.bind in WILDCARDS else self.bind

    def web_port(self, environ: Mapping[str, str] | None = None) -> int:
        """--port, else <NAME>_PORT, else PORT, else 4000 (honcho sets PORT for every process)."""
        if self.port:
            return self.port
        env = os.environ if environ is None else environ
        for var in (f"{self.require_name().upper()}_PORT", "PORT"):
            if env.get(var):
                try:
                    return _port(env[var])
                except ValueError as exc:
                    raise ConfigError(f"{var}: {exc}") from None
        return 4000


def ipc_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, f"{name}.ipc")


def feed_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, f"{name}.sessions.ipc")


def load(cli: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
         require_name: bool = False) -> Settings:
    """Build Settings from command-line values (None when not given), then the environment, then defaults."""
    cli = cli or {}
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    db_source = ""
    for opt in OPTIONS:
        raw = cli.get(opt.name)
        source = opt.flag
        if raw is None and env.get(opt.env):
            raw, source = env[opt.env], opt.env
        if raw is None:
            values[opt.name] = opt.default
            continue
        if opt.name == "db":
            db_source = source
        try:
            values[opt.name] = opt.parse(str(raw))
        except ValueError as exc:
            where = f"{opt.flag} / {opt.env}" if source == opt.flag else f"{opt.env} (or {opt.flag})"
            raise ConfigError(f"{where}: {exc}") from None
    values["db"] = normalise(values["db"])  # the default too (parsers see only given values); idempotent
    _check_db_folder(values["db"], db_source)
    values["run_dir"] = os.path.abspath(values["run_dir"])
    settings = Settings(**{f.name: values[f.name] for f in fields(Settings) if f.name in values})
    if require_name:
        settings.require_name()
        if len(settings.ipc_path.encode()) > IPC_PATH_MAX:
            raise ConfigError(
                f"--run-dir / LOGONMESH_RUN_DIR: the ipc path {settings.ipc_path} is "
                f"{len(settings.ipc_path.encode())} bytes; Linux allows {IPC_PATH_MAX}. Use a shorter run dir.")
    return settings


def _check_db_folder(db: str, source: str) -> None:
    """Only the default folder (``var/``) is made on first use; a given path must name a folder that exists.

    ``source`` is the flag or variable the setting came from ("" for the
    default).  The default location given explicitly (the web process gets
    every setting as a variable) counts as the default.
    """
    folder = missing_folder(db)
    if folder is None or not source:
        return
    if folder == os.path.dirname(os.path.abspath(OPTIONS_BY_NAME["db"].default)):
        return
    where = "--db / LOGONMESH_DB" if source == "--db" else "LOGONMESH_DB (or --db)"
    raise ConfigError(f"{where}: the folder {folder} does not exist (create it first, or fix the path); "
                      f"only the default {OPTIONS_BY_NAME['db'].default} is made on first use")


def resolve_cookie(settings: Settings) -> bytes:
    """The cluster secret: the setting, else the file 'cookie' beside the database, made on first use.

    Like Erlang's cookie file, the file is created with random content and mode
    0600 so that every process started from the same directory agrees on it.
    """
    if settings.cookie:
        return settings.cookie.encode()
    if is_networked(settings.db):  # no file is shared between hosts: a cookie made here would be this host's alone
        raise ConfigError("--cookie / LOGONMESH_COOKIE: must be set when --db is a URL "
                          "(every host of the cluster needs the same secret)")
    path = Path(settings.db).parent / "cookie"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Write a private temp file, then link it into place: link() fails if another
        # process won the race, so nobody ever reads a half-written cookie.
        tmp = path.with_name(f".cookie.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"--cookie / LOGONMESH_COOKIE: the cookie file {path} is empty")
    return value.encode()


def ensure_run_dir(settings: Settings) -> None:
    os.makedirs(settings.run_dir, mode=0o700, exist_ok=True)
    os.chmod(settings.run_dir, 0o700)


def markdown_table() -> str:
    """The configuration table of the README, made from OPTIONS so the two cannot drift apart.

    ``python -m logonmesh.daemon.config`` prints it; a test checks that the README holds it.
    """
    rows = ["| flag | environment | default | used by | meaning |", "|---|---|---|---|---|"]
    for opt in OPTIONS:
        default = "(required)" if opt.name == "name" else "" if opt.default is None else f"`{opt.default}`"
        rows.append(f"| `{opt.flag}` | `{opt.env}` | {default} | {opt.scope} | {opt.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
