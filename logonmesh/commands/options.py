"""What every subcommand shares: one click option per setting, the settings they make, and one-line errors.

It lives below ``logonmesh.cli`` so that the subcommands (loaded lazily by the
group) and the group itself can both use it without importing each other.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, NoReturn

import click

from logonmesh.daemon import config


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


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"logonmesh: {message}", err=True)
    sys.exit(code)


def setup_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
