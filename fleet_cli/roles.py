"""`fleet control-plane`, `fleet migrate` and `fleet agent`: run one of the fleet's roles.

Each deployable is imported inside its command, so that an agent-only install (without
SQLAlchemy) still runs `fleet agent` and the client commands.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleet_cli import parse
from fleet_cli.context import option_parser

if TYPE_CHECKING:
    from control_plane import ControlPlaneSettings, ServiceInstaller

JOIN_TOKEN_ENV = "FLEET_JOIN_TOKEN"
# So that a Kubernetes Secret can supply the URL (it holds the password) to the control
# plane and to the migration Job alike.
DATABASE_URL_ENV = "FLEET_DATABASE_URL"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    text = "text"


LogLevelOption = Annotated[LogLevel, typer.Option(help="Log verbosity (logs go to stderr).")]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        envvar="FLEET_LOG_FORMAT",
        help="json: one JSON object a line (ts, level, logger, message, job_id, ...); "
        "text: for people; auto: json unless stderr is a terminal.",
    ),
]
JoinTokenOption = Annotated[
    str,
    typer.Option(
        envvar=JOIN_TOKEN_ENV,
        help="This dataplane's join token (fleet dataplanes add prints it).",
        show_default=False,
    ),
]


def _file_option(envvar: str, help: str) -> Any:
    """An optional PEM file (checked to exist before anything starts: exit 2 otherwise)."""
    return typer.Option(
        envvar=envvar, exists=True, dir_okay=False, readable=True, metavar="FILE",
        help=help, show_default=False,
    )


def _path(value: Path | None) -> str | None:
    return None if value is None else str(value)


def _configure_logging(level: LogLevel, fmt: LogFormat) -> None:
    from fleet_client.logs import configure_logging

    configure_logging(level.value, fmt.value)


def _seconds(span: timedelta | None) -> float | None:
    return None if span is None else span.total_seconds()


def control_plane(
    listen: Annotated[
        str | None,
        typer.Option(
            parser=option_parser(parse.parse_host_port),
            metavar="HOST:PORT",
            help="Where to listen; port 0 picks a free one (default: 127.0.0.1:50051).",
            show_default=False,
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            envvar=DATABASE_URL_ENV,
            metavar="URL",
            help="sqlite+aiosqlite:///fleet.db (default) or postgresql+psycopg://...",
            show_default=False,
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="No API keys or join tokens: every caller is an admin and any agent may "
            "join. Only on a loopback address (the demo).",
        ),
    ] = False,
    rate_limit: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Calls a second per API key, bursts of twice that (default 100; 0: none).",
            show_default=False,
        ),
    ] = None,
    heartbeat_interval: Annotated[
        timedelta | None,
        typer.Option(
            parser=option_parser(parse.parse_duration),
            metavar="S",
            help="How often agents heartbeat (seconds, or e.g. 5s).",
            show_default=False,
        ),
    ] = None,
    stale_after: Annotated[
        timedelta | None,
        typer.Option(
            parser=option_parser(parse.parse_duration),
            metavar="S",
            help="A dataplane silent this long gets no new work.",
            show_default=False,
        ),
    ] = None,
    lost_after: Annotated[
        timedelta | None,
        typer.Option(
            parser=option_parser(parse.parse_duration),
            metavar="S",
            help="A dataplane silent this long has its attempts requeued.",
            show_default=False,
        ),
    ] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply database migrations at start.")
    ] = True,
    port_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Write the bound port here once listening."),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            parser=option_parser(parse.parse_host_port),
            metavar="HOST:PORT",
            envvar="FLEET_ADVERTISE",
            help="Where the other replicas on this database reach this one (default: the "
            "listen address; the host name when listening on every interface).",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        _file_option(
            "FLEET_TLS_CERT",
            "Serve TLS with this certificate (PEM; may hold the chain after it).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, _file_option("FLEET_TLS_KEY", "The certificate's private key (PEM).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="FLEET_INSECURE",
            help="Serve plaintext instead of TLS. The control plane refuses to start "
            "without TLS unless told so; off loopback it warns (fine behind a service "
            "mesh that terminates TLS).",
        ),
    ] = False,
    tls_client_ca: Annotated[
        Path | None,
        _file_option(
            "FLEET_TLS_CLIENT_CA",
            "Mutual TLS for agents: they dial --agent-listen with a client certificate "
            "signed by this CA, whose CN or a SAN is their dataplane's name; agent streams "
            "without one are refused.",
        ),
    ] = None,
    agent_listen: Annotated[
        str | None,
        typer.Option(
            parser=option_parser(parse.parse_host_port),
            metavar="HOST:PORT",
            envvar="FLEET_AGENT_LISTEN",
            help="With --tls-client-ca: the second port, where every client presents a "
            "client certificate (the agents).",
            show_default=False,
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        _file_option(
            "FLEET_TLS_CA",
            "The CA this control plane trusts when it dials the other replicas and itself "
            "(default: --tls-cert itself).",
        ),
    ] = None,
    tls_server_name: Annotated[
        str | None,
        typer.Option(
            envvar="FLEET_TLS_SERVER_NAME",
            metavar="NAME",
            help="A name in the certificate, checked when this control plane dials the "
            "other replicas and itself (default: the host dialed; pod IPs and 127.0.0.1 are "
            "seldom in a certificate).",
            show_default=False,
        ),
    ] = None,
    http_listen: Annotated[
        str | None,
        typer.Option(
            parser=option_parser(parse.parse_host_port),
            metavar="HOST:PORT",
            envvar="FLEET_HTTP_LISTEN",
            help="Also serve HTTP here: /metrics, /healthz and the read-only web dashboard "
            "at / (HTTPS with --tls-cert; API keys as on the gRPC port). Off by default; "
            "port 0 picks a free one.",
            show_default=False,
        ),
    ] = None,
    http_port_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Write the bound HTTP port here once listening."),
    ] = None,
    flyte_connector: Annotated[
        bool,
        typer.Option(
            "--flyte-connector",
            help="Also serve flytekit's connector service for the `fleet` task type on the "
            "same port, so Flyte's propeller can point at the control plane (needs the "
            "`flyte` extra).",
        ),
    ] = False,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = LogFormat.auto,
) -> None:
    """Run the control plane until SIGINT or SIGTERM."""
    from control_plane import serve
    from control_plane.settings import ControlPlaneSettings, transport_problem

    # Unset options keep ControlPlaneSettings' defaults, the one place they are written.
    given: dict[str, Any] = {
        "listen": listen,
        "database_url": db,
        "heartbeat_interval_s": _seconds(heartbeat_interval),
        "stale_after_s": _seconds(stale_after),
        "lost_after_s": _seconds(lost_after),
        "port_file": str(port_file) if port_file else None,
        "advertise": advertise,
        "rate_limit_per_s": rate_limit,
        "tls_cert": _path(tls_cert),
        "tls_key": _path(tls_key),
        "tls_client_ca": _path(tls_client_ca),
        "agent_listen": agent_listen,
        "tls_ca": _path(tls_ca),
        "tls_server_name": tls_server_name,
        "http_listen": http_listen,
        "http_port_file": str(http_port_file) if http_port_file else None,
    }
    settings = dataclasses.replace(
        ControlPlaneSettings(auth=not no_auth, migrate=migrate, insecure=insecure),
        **{field: value for field, value in given.items() if value is not None},
    )
    if not settings.heartbeat_interval_s < settings.stale_after_s < settings.lost_after_s:
        raise typer.BadParameter(
            f"need heartbeat interval ({settings.heartbeat_interval_s:g}s) < stale after "
            f"({settings.stale_after_s:g}s) < lost after ({settings.lost_after_s:g}s)",
            param_hint="'--heartbeat-interval' / '--stale-after' / '--lost-after'",
        )
    if db is not None:
        _check_database_url(db)
    problem = transport_problem(settings)
    if problem is not None:
        raise typer.BadParameter(problem)
    _configure_logging(log_level, log_format)
    extra_services: list[ServiceInstaller] = []
    if flyte_connector:
        extra_services.append(_flyte_connector_installer(settings))
    serve(settings, extra_services)


def _check_database_url(url: str) -> None:
    """A URL the registry cannot use is a usage error (exit 2), before anything starts."""
    from control_plane.registry import DatabaseUrlError, redact
    from control_plane.registry.database import normalize_url

    try:
        normalize_url(url)
    except DatabaseUrlError as error:
        # The URL usually comes from a Secret: never print its password in a pod's log.
        try:
            shown = redact(url)
        except Exception:
            shown = "..."
        raise typer.BadParameter(
            f"{str(error).replace(url, shown)} "
            "(use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)",
            param_hint="'--db'",
        ) from None


def migrate(
    db: Annotated[
        str,
        typer.Option(
            envvar=DATABASE_URL_ENV,
            metavar="URL",
            help="The database to migrate: sqlite:///PATH or postgresql+psycopg://...",
            show_default=False,
        ),
    ],
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = LogFormat.auto,
) -> None:
    """Apply the database migrations (alembic upgrade head) and print the revision reached.

    Production runs this once per upgrade (a Kubernetes Job) and starts the control plane
    with --no-migrate. Running it again on an up-to-date database changes nothing.
    """
    from control_plane.registry import redact
    from control_plane.registry.database import normalize_url

    _check_database_url(db)
    _configure_logging(log_level, log_format)

    shown = redact(normalize_url(db))
    try:
        revision = asyncio.run(_migrate(db))
    except Exception as error:
        # Unreachable server, wrong password, a schema newer than this code: one line with
        # the reason, exit 1 (the operation failed), as the other commands do.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        typer.echo(f"error: cannot migrate {shown}: {reason}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{shown}: schema at revision {revision}")


async def _migrate(url: str) -> str:
    """Upgrade to head with the control plane's own code, then read back alembic_version."""
    from alembic.runtime.migration import MigrationContext

    from control_plane.registry import Database

    database = Database(url)
    try:
        await database.migrate()
        async with database.engine.connect() as connection:
            revision = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await database.close()
    if revision is None:
        raise RuntimeError("no revision recorded after the upgrade")
    return revision


def _flyte_connector_installer(settings: ControlPlaneSettings) -> ServiceInstaller:
    """flytekit's connector services, calling back into this control plane's JobService
    (over TLS as it serves: trusting its own certificate, or --tls-ca)."""
    from fleet_client import PLAINTEXT, TlsConfig

    try:
        from flyte_plugin.connector_service import install
    except ImportError as error:
        raise typer.BadParameter(
            f"needs the flyte extra (pip install 'flyte-fleet[flyte]'): {error}",
            param_hint="'--flyte-connector'",
        ) from error
    host, _, port = settings.listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    tls = PLAINTEXT if settings.insecure else TlsConfig(
        ca_file=settings.tls_ca or settings.tls_cert, server_name=settings.tls_server_name
    )
    return functools.partial(install, fleet_address=f"{host}:{port}", tls=tls)


def agent(
    control_plane: Annotated[
        str,
        typer.Option(
            parser=option_parser(parse.parse_host_ports),
            metavar="HOST:PORT[,HOST:PORT...]",
            help="The control plane to dial; replicas comma-separated (the agent moves to "
            "the next when one fails).",
            show_default=False,
        ),
    ],
    pools: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="YAML: this dataplane and its GPU pools (or a kubernetes section: pools "
            "from the cluster's GPU nodes, one pod per attempt).",
            show_default=False,
        ),
    ],
    join_token: JoinTokenOption = "",
    workdir: Annotated[
        Path, typer.Option(metavar="DIR", help="Holds one folder per attempt.")
    ] = Path("fleet-agent"),
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="FILE",
            help="The cluster, for a kubernetes pool file (default: the in-cluster service "
            "account, else $KUBECONFIG or ~/.kube/config).",
            show_default=False,
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        _file_option(
            "FLEET_TLS_CA",
            "Trust this CA (PEM) for the control plane's certificate instead of the "
            "system's roots.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        _file_option(
            "FLEET_TLS_CERT",
            "Client certificate for mutual TLS (its CN or a SAN is this dataplane's name).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, _file_option("FLEET_TLS_KEY", "The client certificate's private key.")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="FLEET_INSECURE",
            help="Plaintext, no TLS: only for a control plane started with --insecure.",
        ),
    ] = False,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            parser=option_parser(parse.parse_host_port),
            metavar="HOST:PORT",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (default: none).",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = LogFormat.auto,
) -> None:
    """Run a dataplane agent: dial the control plane, report capacity, launch its jobs."""
    from dataplane_agent import run_agent  # type: ignore[attr-defined, unused-ignore]
    from dataplane_agent.settings import AgentSettings, transport_problem

    settings = AgentSettings(
        control_plane=control_plane, pools_file=pools, join_token=join_token, workdir=workdir,
        kubeconfig=kubeconfig, insecure=insecure, tls_ca=tls_ca, tls_cert=tls_cert,
        tls_key=tls_key, metrics_listen=metrics_listen,
    )
    problem = transport_problem(settings)
    if problem is not None:
        raise typer.BadParameter(problem)
    _configure_logging(log_level, log_format)
    exit_code: int = run_agent(settings)
    raise typer.Exit(exit_code)
