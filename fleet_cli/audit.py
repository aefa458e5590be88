"""`fleet audit`: who changed what (admins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from fleet_cli import parse, render
from fleet_cli.context import emit, open_client, option_parser


def audit(
    ctx: typer.Context,
    actor: Annotated[str, typer.Option(help="Only this actor (a key's name; a prefix).")] = "",
    action: Annotated[
        str, typer.Option(help="Only these actions, by prefix: policy., dataplane.drain, ...")
    ] = "",
    target: Annotated[str, typer.Option(help="Only this target (a dataplane, a job).")] = "",
    since: Annotated[
        timedelta | None,
        typer.Option(parser=option_parser(parse.parse_duration), metavar="DURATION",
                     help="Only the last DURATION (e.g. 24h).", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """The audit log, newest first: policy changes, enrolled and revoked dataplanes,
    cordons and drains, API keys, cancels of others' jobs."""
    start = datetime.now(UTC) - since if since is not None else None
    with open_client(ctx) as client:
        events = client.list_audit_events(
            actor=actor, action=action, target=target, since=start, limit=limit
        )
    emit(ctx, events, lambda now: render.audit_table(events, now))
