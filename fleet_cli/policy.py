"""`fleet policy ...`: apply, inspect and roll back the routing policy; explain a placement."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from typing import Annotated

import typer
from rich.text import Text

from fleet_cli import render
from fleet_cli.context import OutputFormat, emit, global_options, open_client
from fleet_cli.job_options import (
    DEFAULT_DOMAIN,
    UINT32_MAX,
    AllowSpotOption,
    DomainOption,
    GpuModelOption,
    GpusOption,
    LabelOption,
    MinGpuMemoryOption,
    NameOption,
    OriginRegionOption,
    PinOption,
    ProjectOption,
    job_spec,
)
from fleet_client import InvalidArgument

app = typer.Typer(
    help="The routing policy: a YAML document, versioned on every apply.", no_args_is_help=True
)

UINT64_MAX = 2**64 - 1
STDIN = "-"
FILE_OPTION_HINT = "'--file' / '-f'"

AuthorOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Who makes the change, for the history (default: $USER@hostname).",
        show_default=False,
    ),
]


def default_author() -> str:
    """$USER@hostname: enough to find the person behind a version in `fleet policy history`."""
    user = os.environ.get("USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no login name and a uid without a passwd entry
            user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _source_name(path: str) -> str:
    return "<stdin>" if path == STDIN else repr(path)


def read_document(path: str) -> str:
    """The file's text ('-': stdin); a file that cannot be read is a usage error naming it."""
    try:
        if path == STDIN:
            return sys.stdin.read()
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as error:
        reason = error.strerror or str(error)
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 text ({error.reason} at byte {error.start})"
    raise typer.BadParameter(
        f"cannot read {_source_name(path)}: {reason}", param_hint=FILE_OPTION_HINT
    )


@app.command()
def apply(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Option("--file", "-f", metavar="FILE", help="The policy YAML; '-' reads stdin."),
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Apply nothing; show how recent jobs would route under it."),
    ] = False,
    replay: Annotated[
        int,
        typer.Option(
            min=0,
            max=UINT32_MAX,
            metavar="N",
            help="With --dry-run: how many recent jobs to replay (0: the server's default).",
        ),
    ] = 0,
    comment: Annotated[str, typer.Option(help="Why, for the history.")] = "",
    author: AuthorOption = None,
) -> None:
    """Validate a policy document and make it the new version (or only try it: --dry-run)."""
    if replay and not dry_run:
        raise typer.BadParameter(
            "only a dry run replays jobs: add --dry-run", param_hint="'--replay'"
        )
    document = read_document(file)
    with open_client(ctx) as client:
        try:
            response = client.apply_policy(
                document,
                author=default_author() if author is None else author,
                comment=comment,
                dry_run=dry_run,
                replay_jobs=replay,
            )
        except InvalidArgument as error:
            # The server's lines (one problem each, naming line:column and field) stay as
            # they are; the first line says which of the user's files they are about.
            message = f"the control plane rejected the policy in {_source_name(file)}:\n"
            raise InvalidArgument(message + error.message, error.code) from error
    if dry_run:
        emit(ctx, response, lambda now: render.dry_run_report(response))
        return
    applied = response.applied
    emit(ctx, applied, lambda now: Text(f"applied policy version {applied.version}"))


@app.command()
def history(ctx: typer.Context) -> None:
    """Every version of the policy, newest first; '*' marks the one in force."""
    with open_client(ctx) as client:
        response = client.list_policy_versions()
    versions = list(response.versions)
    emit(ctx, versions, lambda now: render.policy_versions_table(versions, response.current))


@app.command()
def show(
    ctx: typer.Context,
    version: Annotated[
        int,
        typer.Argument(
            min=0,
            max=UINT64_MAX,
            metavar="VERSION",
            help="Default (or 0): the one in force.",
            show_default=False,
        ),
    ] = 0,
) -> None:
    """Write a version's document, as it was applied, to stdout."""
    with open_client(ctx) as client:
        policy = client.get_policy(version)
    if global_options(ctx).output is OutputFormat.json:
        typer.echo(render.to_json(policy))
        return
    # As-is, not through rich: `fleet policy show > policy.yaml` gives back the same bytes.
    sys.stdout.write(policy.document)
    sys.stdout.flush()


@app.command()
def rollback(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(min=0, max=UINT64_MAX, metavar="VERSION")],
    author: AuthorOption = None,
) -> None:
    """Apply an old version's document again, as a new version."""
    with open_client(ctx) as client:
        applied = client.rollback_policy(
            version, author=default_author() if author is None else author
        )
    message = f"rolled back: version {applied.version} now holds the document of version {version}"
    emit(ctx, applied, lambda now: Text(message))


@app.command()
def explain(
    ctx: typer.Context,
    project: ProjectOption,
    domain: DomainOption = DEFAULT_DOMAIN,
    name: NameOption = "",
    label: LabelOption = None,
    gpus: GpusOption = 0,
    gpu_model: GpuModelOption = "",
    min_gpu_memory: MinGpuMemoryOption = 0,
    origin_region: OriginRegionOption = "",
    allow_spot: AllowSpotOption = None,
    pin: PinOption = "",
) -> None:
    """Where a job like this would go under the current policy, and why (nothing is submitted)."""
    spec = job_spec(
        project=project,
        domain=domain,
        name=name,
        labels=label or [],
        gpus=gpus,
        gpu_model=gpu_model,
        min_gpu_memory=min_gpu_memory,
        origin_region=origin_region,
        allow_spot=allow_spot,
        pin=pin,
    )
    with open_client(ctx) as client:
        explanation = client.explain_placement(spec)
    emit(ctx, explanation, lambda now: render.explanation(explanation))
