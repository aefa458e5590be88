"""`fleet dataplanes ...`: what the control plane knows of each dataplane, and taking one
out of service (cordon, drain) and back (uncordon)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from fleet_cli import parse, render
from fleet_cli.context import emit, open_client, option_parser

app = typer.Typer(help="Inspect dataplanes; cordon, drain and uncordon them.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(metavar="DATAPLANE", show_default=False)]
ReasonOption = Annotated[
    str, typer.Option(help="Why, for the other operators (shown in lists and explanations).")
]


@app.command("list")
def list_dataplanes(ctx: typer.Context) -> None:
    """Dataplanes with their state, health, last heartbeat, GPU pools and active attempts."""
    with open_client(ctx) as client:
        dataplanes = client.list_dataplanes()
    emit(ctx, dataplanes, lambda now: render.dataplanes_table(dataplanes, now))


@app.command()
def cordon(ctx: typer.Context, name: NameArgument, reason: ReasonOption = "") -> None:
    """No new work on the dataplane; what runs there goes on."""
    with open_client(ctx) as client:
        dataplane = client.cordon_dataplane(name, reason)
    emit(ctx, dataplane, lambda now: render.dataplanes_table([dataplane], now))


@app.command()
def drain(
    ctx: typer.Context,
    name: NameArgument,
    deadline: Annotated[
        timedelta,
        typer.Option(
            parser=option_parser(parse.parse_duration),
            metavar="DURATION",
            help="How long running jobs may go on (e.g. 30m); then they are stopped and run "
            "elsewhere, spending none of their retries. 0: at once.",
        ),
    ] = timedelta(minutes=30),
    reason: ReasonOption = "",
) -> None:
    """Cordon the dataplane and move what still runs there at the deadline."""
    with open_client(ctx) as client:
        dataplane = client.drain_dataplane(name, deadline, reason)
    emit(ctx, dataplane, lambda now: render.dataplanes_table([dataplane], now))


@app.command()
def uncordon(ctx: typer.Context, name: NameArgument) -> None:
    """Back to work: end a cordon or a drain."""
    with open_client(ctx) as client:
        dataplane = client.uncordon_dataplane(name)
    emit(ctx, dataplane, lambda now: render.dataplanes_table([dataplane], now))
