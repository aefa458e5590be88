"""`fleet dataplanes ...`: what the control plane knows of each dataplane."""

from __future__ import annotations

import typer

from fleet_cli import render
from fleet_cli.context import emit, open_client

app = typer.Typer(help="Inspect dataplanes and their GPU pools.", no_args_is_help=True)


@app.command("list")
def list_dataplanes(ctx: typer.Context) -> None:
    """Dataplanes with their health, last heartbeat, GPU pools and active attempts."""
    with open_client(ctx) as client:
        dataplanes = client.list_dataplanes()
    emit(ctx, dataplanes, lambda now: render.dataplanes_table(dataplanes, now))
