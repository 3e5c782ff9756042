"""The ``logonmesh`` command.

Every shared setting becomes a flag here from ``logonmesh.daemon.config.OPTIONS``, so
the CLI cannot drift from the daemon and the web.  Heavy imports (Flask, the
daemon's loop) happen inside the subcommand that needs them, to keep start-up
quick.  Errors are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from logonmesh.commands import CommandGroup
from logonmesh.commands.options import fail, load_settings, setting_options, setup_logging
from logonmesh.daemon import config

if TYPE_CHECKING:
    from flask import Flask


@click.group(cls=CommandGroup,  # the inspection subcommands, loaded on first use: logonmesh/commands/
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """logonmesh: a clustered login service with no central cache server."""


@main.command()
@setting_options("shared", "daemon")
def daemon(**values: Any) -> None:
    """Run this node's daemon: the mesh peer that holds users and sessions."""
    settings = load_settings(values, require_name=True)
    setup_logging(settings.require_name())
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
    """Run this node's web process: the Flask app of --app (the demo by default) on waitress.

    The app is imported from the working directory first, and its factory sees
    every setting resolved here as a LOGONMESH_* environment variable.
    """
    settings = load_settings(values, require_name=True)
    setup_logging(settings.require_name())
    try:
        port = settings.web_port()
    except config.ConfigError as exc:
        fail(str(exc))
    from logonmesh.commands import webapp
    from logonmesh.commands.serve import serve
    webapp.prepare(settings, port)

    def build() -> Flask:
        try:
            return webapp.load_app(settings.app)
        except webapp.AppLoadError as exc:
            fail(f"cannot load the app '{settings.app}': {exc}")
    serve(settings, port, build)


if __name__ == "__main__":
    main()
