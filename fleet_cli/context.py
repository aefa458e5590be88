"""The global options (--address, --output, --tls-ca, --insecure) and what the client
commands share."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import typer
from google.protobuf.message import Message
from rich.console import Console, RenderableType

from fleet_cli import parse, render
from fleet_client import FleetClient, TlsConfig

DEFAULT_ADDRESS = "127.0.0.1:50051"
# The same variables configure the Flyte connector (fleet_client.TlsConfig.from_env).
TLS_CA_ENV = "FLEET_TLS_CA"
API_KEY_ENV = "FLEET_API_KEY"
INSECURE_ENV = "FLEET_INSECURE"

ParsedT = TypeVar("ParsedT")


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


@dataclass(frozen=True)
class GlobalOptions:
    address: str = DEFAULT_ADDRESS
    output: OutputFormat = OutputFormat.table
    # TLS with the system's roots unless told otherwise.
    tls: TlsConfig = field(default_factory=TlsConfig)
    api_key: str = field(default="", repr=False)


def option_parser(parse: Callable[[str], ParsedT]) -> Callable[[str], ParsedT]:
    """A parse.* function as a typer parser: its ValueError becomes a usage error (exit 2)."""

    def parse_option(text: str) -> ParsedT:
        try:
            return parse(text)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None

    return parse_option


def parsed_pairs(
    items: Iterable[str], parser: Callable[[str], tuple[str, str]], option: str
) -> dict[str, str]:
    """Repeated KEY=VALUE options as a dict; a bad item is a usage error naming the option."""
    try:
        return parse.to_mapping(parser(item) for item in items)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint=f"'{option}'") from None


def global_options(ctx: typer.Context) -> GlobalOptions:
    options = ctx.find_root().obj
    return options if isinstance(options, GlobalOptions) else GlobalOptions()


def open_client(ctx: typer.Context) -> FleetClient:
    options = global_options(ctx)
    return FleetClient(options.address, tls=options.tls, api_key=options.api_key)


# Piped output (grep, a CI log) is not wrapped at 80 columns: rows stay whole.
PIPE_WIDTH = 200


def stdout_console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def emit(
    ctx: typer.Context,
    value: Message | Sequence[Message],
    table: Callable[[datetime], RenderableType],
) -> None:
    """Print the value as JSON, or as the table built for people (given the time now)."""
    if global_options(ctx).output is OutputFormat.json:
        typer.echo(render.to_json(value))
    else:
        stdout_console().print(table(datetime.now(UTC)))
