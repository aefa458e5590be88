"""`fleet dataplanes ...`: what the control plane knows of each dataplane; enrolling one
and its agent's join token (add, rotate-token, revoke); taking one out of service (cordon,
drain) and back (uncordon)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from fleet.v1 import admin_pb2

from fleet_cli import parse, render
from fleet_cli.context import (
    OutputFormat,
    emit,
    global_options,
    open_client,
    option_parser,
    parsed_pairs,
)

app = typer.Typer(
    help="Inspect and enroll dataplanes; cordon, drain and uncordon them.", no_args_is_help=True
)

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


@app.command()
def add(
    ctx: typer.Context,
    name: NameArgument,
    region: Annotated[str, typer.Option(help="Where its GPUs and data are, e.g. europe-west4.")],
    cloud: Annotated[str, typer.Option(help="gcp, aws, azure, onprem, ...")],
    label: Annotated[
        list[str] | None, typer.Option(metavar="KEY=VALUE", help="Label (repeatable).")
    ] = None,
) -> None:
    """Enroll a dataplane and print its agent's join token (only now)."""
    labels = parsed_pairs(label or [], parse.parse_key_value, "--label")
    with open_client(ctx) as client:
        enrolled = client.enroll_dataplane(name, region, cloud, labels)
    _print_token(ctx, enrolled)


@app.command("rotate-token")
def rotate_token(ctx: typer.Context, name: NameArgument) -> None:
    """A new join token for the dataplane's agent; the old one stops working (a stream open
    now goes on until the agent reconnects)."""
    with open_client(ctx) as client:
        rotated = client.rotate_join_token(name)
    _print_token(ctx, rotated)


@app.command()
def revoke(ctx: typer.Context, name: NameArgument) -> None:
    """Revoke the dataplane's join token: its agent is disconnected and cannot join again."""
    with open_client(ctx) as client:
        dataplane = client.revoke_join_token(name)
    emit(ctx, dataplane, lambda now: render.dataplanes_table([dataplane], now))


def _print_token(ctx: typer.Context, response: admin_pb2.JoinTokenResponse) -> None:
    if global_options(ctx).output is OutputFormat.json:
        typer.echo(render.to_json(response))
        return
    typer.echo(response.join_token)
    typer.echo(f"join token of dataplane {response.dataplane.name!r}: give it to its agent "
               "(--join-token or FLEET_JOIN_TOKEN); it is not shown again.", err=True)
