"""The ``logonmesh`` command.

Every shared setting becomes a flag here from ``daemon.config.OPTIONS``, so
the CLI cannot drift from the daemon and the web.  Heavy imports (Flask, the
daemon's loop) happen inside the subcommand that needs them, to keep start-up
quick.  Errors are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import click

from logonmesh.daemon import config
from logonmesh.daemon.commands import CommandGroup


def setting_options(*scopes: str) -> Callable:
    """Add one click option per setting in the given scopes; values arrive as strings (None if unset)."""
    def decorate(fn: Callable) -> Callable:
        for opt in reversed([o for o in config.OPTIONS if o.scope in scopes]):
            default = "" if opt.default is None else f" [default: {opt.default}]"
            help_text = f"{opt.help} (env {opt.env}){default}"
            if opt.parse is config.parse_flag:
                fn = click.option(opt.flag, opt.name, is_flag=True, flag_value="1", default=None,
                                  help=help_text)(fn)
            else:
                fn = click.option(opt.flag, opt.name, default=None, metavar="VALUE", help=help_text)(fn)
        return fn
    return decorate


def load_settings(values: dict[str, Any], require_name: bool = False) -> config.Settings:
    try:
        return config.load({k: v for k, v in values.items() if k in config.OPTIONS_BY_NAME},
                           require_name=require_name)
    except config.ConfigError as exc:
        fail(str(exc))


def fail(message: str, code: int = 2) -> None:
    click.echo(f"logonmesh: {message}", err=True)
    sys.exit(code)


def setup_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


@click.group(cls=CommandGroup,  # the inspection subcommands, loaded on first use: daemon/commands/
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """logonmesh: a clustered login service with no central cache server."""


@main.command()
@setting_options("shared", "daemon")
def daemon(**values: Any) -> None:
    """Run this node's daemon: the mesh peer that holds users and sessions."""
    settings = load_settings(values, require_name=True)
    setup_logging(settings.name)
    import sqlite3

    import zmq

    from logonmesh.daemon.node import Daemon, StartupError
    try:  # Daemon() reads or creates the cookie file, so it belongs inside too
        node = Daemon(settings)
        node.start()
    except config.ConfigError as exc:
        fail(str(exc))
    except StartupError as exc:
        fail(str(exc), 1)
    except sqlite3.Error as exc:
        fail(f"--db / LOGONMESH_DB: cannot use {settings.db}: {exc}", 1)
    except (OSError, zmq.ZMQError) as exc:
        fail(f"cannot start the daemon: {exc}", 1)
    node.run()


@main.command()
@setting_options("shared", "web")
def web(**values: Any) -> None:
    """Run this node's web front end (Flask on waitress)."""
    settings = load_settings(values, require_name=True)
    setup_logging(settings.name)
    try:
        port = settings.web_port()
    except config.ConfigError as exc:
        fail(str(exc))
    from logonmesh.web.serve import serve
    serve(settings, port)


if __name__ == "__main__":
    main()
