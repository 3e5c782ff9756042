"""``logonmesh sessions`` and ``revoke``: a person's logins on the cluster, seen and ended from a terminal.

Both ask one daemon (``--node``, as the other inspection commands do): every
daemon holds every session, so one answers for the cluster, and a revocation
it writes reaches every node like a logout.  Sessions are named by their
public id (a hash of the token), never by the token.
"""

from __future__ import annotations

import re
from typing import Any

import click

from logonmesh.commands.common import call, emit_json, inspect_options, node_option, out, pick_node, split_settings, \
    table

SESSION_ID_RE = re.compile(r"[0-9a-f]{16}")
FIELDS = ("id", "node", "created_at", "last_seen", "device")


def _session_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not SESSION_ID_RE.fullmatch(value):
        raise click.BadParameter(f"{value[:40]!r} is not a session id (16 hex digits, as 'logonmesh sessions' shows)")
    return value


@click.command()
@click.argument("username")
@node_option()
@inspect_options
def sessions(**values: Any) -> None:
    """The live sessions of USERNAME on the cluster: id, node, created_at, last_seen, device."""
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    found = [{field: row[field] for field in FIELDS}
             for row in call(settings, name, "sessions_of", username=args["username"])]
    if args["as_json"]:
        emit_json(found)
        return
    out(f"sessions of {args['username']} in the cache of node {name} ({how})")
    if found:
        out(table(["ID", "NODE", "CREATED", "LAST SEEN", "DEVICE"], [[row[f] for f in FIELDS] for row in found]))
    out(f"{len(found)} live session{'' if len(found) == 1 else 's'}")


@click.command()
@click.argument("username")
@click.option("--session", "session_id", metavar="ID", callback=_session_id,
              help="end only this session (its id from 'logonmesh sessions'); default: all of the user's sessions")
@node_option()
@inspect_options
def revoke(**values: Any) -> None:
    """End the sessions of USERNAME (or one, --session ID) on every node; exit 1 when --session matched none."""
    settings, args = split_settings(values)
    name, how = pick_node(settings, args["node"])
    username, wanted = args["username"], args["session_id"]
    if wanted is None:
        answer = call(settings, name, "session_revoke_all", username=username, keep=None)
    else:
        answer = call(settings, name, "session_revoke_id", username=username, id=wanted)
    if args["as_json"]:
        emit_json({"node": name, "username": username, "revoked": answer["ids"]})
    else:
        out(f"ended {answer['revoked']} session{'' if answer['revoked'] == 1 else 's'} of {username} "
            f"through node {name} ({how})" + "".join(f"\n  {sid}" for sid in answer["ids"]))
    if wanted is not None and not answer["ids"]:
        if not args["as_json"]:
            out(f"no live session {wanted} of {username}")
        raise SystemExit(1)
