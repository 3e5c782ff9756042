"""The inspection subcommands of ``logonmesh``: peers, status, cache, tap, ping, partition, heal, monitor.

Why a lazy group: ``logonmesh tap`` must start in a blink, or it misses what
the user came to see.  Each subcommand lives in a module of this package that
is imported only when that subcommand runs (or when ``logonmesh --help`` lists
them all), so no command pays for another's imports.  This module itself
imports nothing but click.

Why one-line usage errors: every error of the tool is one line on stderr and
exit code 2 (see ``logonmesh.commands.options.fail``); click's own usage errors would
otherwise print three lines in another style.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# subcommand -> the module that defines a click command of the same name
LAZY_COMMANDS: dict[str, str] = {
    "peers": "logonmesh.commands.views",
    "status": "logonmesh.commands.views",
    "cache": "logonmesh.commands.views",
    "tap": "logonmesh.commands.tap",
    "ping": "logonmesh.commands.ping",
    "partition": "logonmesh.commands.faults",
    "heal": "logonmesh.commands.faults",
    "monitor": "logonmesh.commands.monitor",
    "sessions": "logonmesh.commands.sessions", "revoke": "logonmesh.commands.sessions",
}


class CommandGroup(click.Group):
    """The ``logonmesh`` group: eager commands (daemon, web) plus the lazy ones above."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            return getattr(importlib.import_module(LAZY_COMMANDS[name]), name)
        return super().get_command(ctx, name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Like click's main, but a usage error is one line: ``logonmesh: <what> (see <cmd> --help)``."""
        kwargs["standalone_mode"] = False
        given = kwargs.get("args", args[0] if args else None)
        if not (sys.argv[1:] if given is None else given):
            click.echo(self.short_help_text(kwargs.get("prog_name") or "logonmesh"))  # like bare `git`
            sys.exit(0)
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "logonmesh"
            _fail(f"{exc.format_message().rstrip('.')} (see '{where} --help')", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:  # Ctrl-C while click itself was busy (parsing, prompting)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def short_help_text(self, prog_name: str) -> str:
        """What bare ``logonmesh`` prints: the usage line and the subcommands, no options, to stdout."""
        ctx = click.Context(self, info_name=prog_name, **self.context_settings)
        formatter = ctx.make_formatter()
        self.format_usage(ctx, formatter)
        self.format_commands(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(f"See '{prog_name} COMMAND --help' for one command, '{prog_name} --help' for all.")
        return formatter.getvalue().rstrip("\n")


def _fail(message: str, code: int) -> None:
    click.echo(f"logonmesh: {message}", err=True)
    sys.exit(code)
