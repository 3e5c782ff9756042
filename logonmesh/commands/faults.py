"""``logonmesh partition`` and ``heal``: the test harness's fault injection, from a terminal.

A cut is made inside the daemons, as in `logonmesh.testing`: each daemon is told
over its ipc socket which peers to drop, and drops every bus and peer message
to and from them.  Both sides are told, so the cut is symmetric; the ``partition``
op is called with replace=False, so successive cuts add up until ``heal``.
Only daemons with a socket in this run dir can be told: a node elsewhere is
reported, and the command exits 1 because its side of the cut is missing.
"""

from __future__ import annotations

from typing import Any

import click

from logonmesh.commands.common import (
    Unreachable, ask, emit_json, fail, inspect_options, ipc_of, note, out, registry_rows, running_daemons, shown,
    split_settings, unknown_node,
)
from logonmesh.daemon.config import NAME_RE, Settings


def _names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not NAME_RE.match(name):
            raise click.BadParameter(f"{name!r} is not a node name ([a-z0-9_-]{{1,32}})")
    return value


@click.command()
@click.argument("names", metavar="NAME...", nargs=-1, required=True, callback=_names)
@click.option("--from", "from_", metavar="NAME", multiple=True, callback=_names,
              help="cut only from these nodes (repeat the option); default: from every other node")
@inspect_options
def partition(**values: Any) -> None:
    """Cut each NAME off from every other node (or only from the --from nodes), both ways."""
    settings, args = split_settings(values)
    targets, others = set(args["names"]), set(args["from_"])
    known = known_nodes(settings)
    unknown = sorted((targets | others) - known)
    if unknown:
        unknown_node(unknown, known, "a node is known by its row in the clusters table or its daemon's socket "
                     f"in {shown(settings.run_dir)}")
    if targets & others:
        fail(f"a node cannot be cut from itself: {', '.join(sorted(targets & others))} is on both sides")
    others = others or known - targets
    if not others:
        fail("there is no other node to cut it from")
    plan = {t: others for t in targets} | {o: targets for o in others}
    blocked, missing = tell_all(settings, plan)
    if args["as_json"]:
        emit_json({"blocked": blocked, "not_told": missing})
    else:
        for name, now in sorted(blocked.items()):
            out(f"{name} now drops {', '.join(now)}")
    warn_missing(settings, missing, "its side of the cut is missing")
    raise SystemExit(1 if missing else 0)


@click.command()
@inspect_options
def heal(**values: Any) -> None:
    """Tell every daemon in the run dir to drop nobody and lose nothing."""
    settings, args = split_settings(values)
    names = running_daemons(settings)
    if not names:
        fail(f"no daemon is running (no socket in {shown(settings.run_dir)})")
    healed, errors = [], []
    for name in names:
        try:
            ask(settings, name, "heal")
            healed.append(name)
        except Unreachable as exc:
            errors.append(str(exc))
    if args["as_json"]:
        emit_json({"healed": healed, "errors": errors})
    else:
        for name in healed:
            out(f"{name} healed: drops nobody, no loss")
    if errors:
        fail("; ".join(errors))


def known_nodes(settings: Settings) -> set[str]:
    """Nodes in the clusters table or with a daemon in the run dir."""
    return {r.id for r in registry_rows(settings)} | set(running_daemons(settings))


def tell_all(settings: Settings, plan: dict[str, set[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Tell each daemon whom to drop; returns (name -> all it now drops, names with no daemon here)."""
    blocked, missing = {}, []
    local = set(running_daemons(settings))
    for name, peers in sorted(plan.items()):
        if name not in local:
            missing.append(name)
            continue
        try:
            blocked[name] = ask(settings, name, "partition", peers=sorted(peers), replace=False)["blocked"]
        except Unreachable as exc:
            fail(str(exc))
    return blocked, missing


def warn_missing(settings: Settings, missing: list[str], consequence: str) -> None:
    for name in missing:
        note(f"logonmesh: node {name} has no daemon here to tell (no socket at {shown(ipc_of(settings, name))}); "
             f"{consequence}")
