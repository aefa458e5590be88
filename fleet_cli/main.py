"""`fleet`: the one command line of flyte-fleet.

    fleet control-plane ...      run the control plane
    fleet migrate --db URL       apply the database migrations (a deployment's migration job)
    fleet agent ...              run a dataplane agent
    fleet jobs submit|get|list|cancel|watch|logs|explain
    fleet dataplanes list
    fleet status [--once|--json]
    fleet policy apply|history|show|rollback|explain

Exit codes:
    0    ok
    1    the operation failed: the job did not succeed under --wait, the job was not
         found, or the server failed
    2    bad input: a usage error, or the server rejected the request as invalid
         (INVALID_ARGUMENT, FAILED_PRECONDITION); the reason is printed to stderr
    3    the control plane could not be reached (UNAVAILABLE, DEADLINE_EXCEEDED)
    130  interrupted (Ctrl-C)

Server errors reach this module as fleet_client.FleetError and are turned into an exit
code and an `error: <message>` line in one place: FleetGroup.invoke.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fleet_cli import audit, dataplanes, jobs, keys, policy, roles, status
from fleet_cli.context import (
    API_KEY_ENV,
    DEFAULT_ADDRESS,
    INSECURE_ENV,
    TLS_CA_ENV,
    GlobalOptions,
    OutputFormat,
    global_options,
)
from fleet_cli.demo import demo_command
from fleet_client import (
    DeadlineExceeded,
    FailedPrecondition,
    FleetError,
    InvalidArgument,
    TlsConfig,
    Unavailable,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3

EXIT_CODES_EPILOG = (
    "Exit codes: 0 ok; "
    "1 the operation failed (job failed under --wait, not found, server error); "
    "2 bad input (usage error, or the server rejected the request as invalid); "
    "3 the control plane could not be reached; "
    "130 interrupted."
)


def exit_code_for(error: FleetError) -> int:
    if isinstance(error, InvalidArgument | FailedPrecondition):
        return EXIT_BAD_INPUT
    if isinstance(error, Unavailable | DeadlineExceeded):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def error_message(error: FleetError, address: str) -> str:
    if isinstance(error, Unavailable):
        return f"cannot reach the control plane at {address}: {error.message}"
    if isinstance(error, DeadlineExceeded):
        return f"the control plane at {address} did not answer in time: {error.message}"
    return error.message


def tls_hint(error: FleetError, tls: TlsConfig) -> str:
    """What to do when the connection failed at the TLS layer ('' when it did not)."""
    if not isinstance(error, Unavailable):
        return ""
    if "CERTIFICATE_VERIFY_FAILED" in error.message:
        return (
            "\nhint: the control plane's certificate is not signed by a CA this client "
            "trusts: give its CA with --tls-ca FILE (or FLEET_TLS_CA)"
        )
    if "Hostname Verification" in error.message:
        return "\nhint: the control plane's certificate does not name the host in --address"
    if "WRONG_VERSION_NUMBER" in error.message:
        return (
            "\nhint: the control plane answered in plaintext; if it was started with "
            "--insecure, use --insecure (or FLEET_INSECURE=1) here too"
        )
    if tls.insecure and "Socket closed" in error.message:
        return "\nhint: plaintext (--insecure) was refused: the control plane probably serves TLS"
    return ""


class FleetGroup(TyperGroup):
    """The root group: every FleetError of every sub-command becomes an exit code here."""

    # Any: the base class types ctx as typer's vendored click Context, which is private.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as error:
            options = global_options(ctx)
            message = error_message(error, options.address) + tls_hint(error, options.tls)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(exit_code_for(error)) from None


app = typer.Typer(
    cls=FleetGroup,
    name="fleet",
    help="One control plane for GPU work across on-prem, on-demand and spot dataplanes.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def global_option_values(
    ctx: typer.Context,
    address: Annotated[
        str,
        typer.Option(
            envvar="FLEET_ADDRESS",
            metavar="HOST:PORT",
            help="The control plane the client commands talk to.",
        ),
    ] = DEFAULT_ADDRESS,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="Tables for people, JSON for scripts.")
    ] = OutputFormat.table,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            envvar=TLS_CA_ENV,
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="Trust this CA (PEM) for the control plane's certificate instead of the "
            "system's roots.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar=INSECURE_ENV,
            help="Plaintext, no TLS: only for a control plane started with --insecure (the "
            "demo on 127.0.0.1). Without it the client speaks TLS.",
        ),
    ] = False,
    api_key: Annotated[
        str,
        typer.Option(
            envvar=API_KEY_ENV,
            metavar="KEY",
            help="Your API key (fleet keys create makes them).",
            show_default=False,
        ),
    ] = "",
) -> None:
    if insecure and tls_ca is not None:
        raise typer.BadParameter(
            "plaintext (--insecure, FLEET_INSECURE) and a TLS CA: choose one",
            param_hint="'--insecure' / '--tls-ca'",
        )
    tls = TlsConfig(insecure=insecure, ca_file=str(tls_ca) if tls_ca else None)
    ctx.obj = GlobalOptions(address=address, output=output, tls=tls, api_key=api_key)


def _register_commands(root: typer.Typer) -> None:
    # One line per command module; `fleet demo` (fleet_cli/demo.py) is added here.
    root.command("control-plane")(roles.control_plane)
    root.command("migrate")(roles.migrate)
    root.command("agent")(roles.agent)
    root.add_typer(jobs.app, name="jobs")
    root.add_typer(dataplanes.app, name="dataplanes")
    root.add_typer(policy.app, name="policy")
    root.add_typer(keys.app, name="keys")
    root.command("audit")(audit.audit)
    root.command("demo")(demo_command)
    root.command("status")(status.status)


_register_commands(app)


def main() -> None:
    app()
