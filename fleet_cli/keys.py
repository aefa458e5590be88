"""`fleet keys ...`: API keys (admins). A key is printed once, when it is made.

`fleet keys create NAME --role admin --project '*' --db URL` makes the first admin key
straight in the database, before anyone holds a key to ask the control plane with.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer

from fleet_cli import render
from fleet_cli.context import emit, open_client

app = typer.Typer(help="Create, list and revoke API keys (admins).", no_args_is_help=True)

ROLES = ("viewer", "submitter", "admin")


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Who or what holds the key.")],
    role: Annotated[
        str, typer.Option(help="viewer (read), submitter (read, submit, cancel) or admin.")
    ],
    project: Annotated[
        list[str],
        typer.Option(metavar="PROJECT", help="A project the key covers (repeatable); '*': all."),
    ],
    db: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Make the key in this database directly (the first admin key), instead of "
            "asking the control plane.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make an API key and print it (only now: the control plane keeps its hash)."""
    if db is None:
        with open_client(ctx) as client:
            made = client.create_api_key(name, role, project)
        key_id, secret = made.key.id, made.secret
    else:
        key_id, secret = asyncio.run(_create_in_database(db, name, role, project))
    typer.echo(secret)
    typer.echo(f"API key {name!r} ({key_id}): {role} of {', '.join(project)}. Send it as "
               "--api-key or FLEET_API_KEY; it is not shown again.", err=True)


async def _create_in_database(
    url: str, name: str, role: str, projects: list[str]
) -> tuple[str, str]:
    from control_plane.api.admin_keys import key_problem
    from control_plane.domain.access import Role
    from control_plane.registry import Database, KeyStore

    problem = key_problem(name, role, projects)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="NAME / '--role' / '--project'")
    database = Database(url)
    try:
        record, secret = await KeyStore(database).create(
            name, Role(role), projects, "fleet keys create --db", datetime.now(UTC)
        )
    finally:
        await database.close()
    return record.id, secret


@app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Every API key with its role, projects and whether it was revoked (never the key)."""
    with open_client(ctx) as client:
        keys = client.list_api_keys()
    emit(ctx, keys, lambda now: render.keys_table(keys, now))


@app.command()
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (fleet keys list).")],
) -> None:
    """Revoke an API key: it stops working within seconds on every control plane."""
    with open_client(ctx) as client:
        key = client.revoke_api_key(key_id)
    emit(ctx, key, lambda now: render.keys_table([key], now))
