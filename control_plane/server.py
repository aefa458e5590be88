"""Wiring: the registry, the scheduler, the servicers and one grpc.aio server.

`start()` returns a running control plane (tests use it in-process); `serve()` is the
blocking entry point of `fleet control-plane`, stopping cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from fleet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    replica_pb2,
    replica_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.api.access import Access
from control_plane.api.admin import AdminService
from control_plane.api.agents import AgentService
from control_plane.api.errors import ErrorTranslation
from control_plane.api.jobs import JobService
from control_plane.api.peer import AgentCertificates
from control_plane.api.policy import PolicyService
from control_plane.api.replicas import ReplicaService
from control_plane.clock import Clock, SystemClock
from control_plane.domain.access import ALL_PROJECTS, Role
from control_plane.domain.health import Timers
from control_plane.domain.rate_limit import RateLimits
from control_plane.metrics import ControlPlaneMetrics
from control_plane.registry import (
    AuditLog,
    Database,
    DataplaneStore,
    FleetStats,
    JobStore,
    JoinTokens,
    KeyStore,
    Leadership,
    PolicyStore,
    ReplicaStore,
    SchedulingStore,
    redact,
)
from control_plane.relay import Relay
from control_plane.scheduler import Scheduler
from control_plane.sessions import SessionHub
from control_plane.settings import ControlPlaneSettings, is_loopback, transport_problem
from control_plane.web import (
    HttpListenError,
    HttpServer,
    WebSources,
    make_app,
    start_http,
    tls_context,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name,
)
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Agents ping every 20 s on quiet streams; accept that instead of closing with
    # too_many_pings (gRPC's default minimum is 5 minutes).
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class SettingsError(ValueError):
    pass


# Adds more servicers to the control plane's server (e.g. flytekit's connector service, so
# Flyte's propeller can point at the control plane) and returns their full service names.
ServiceInstaller = Callable[[grpc.aio.Server], Sequence[str]]


@dataclass
class RunningControlPlane:
    port: int
    server: grpc.aio.Server
    database: Database
    scheduler: Scheduler
    scheduler_task: asyncio.Task[None]
    health: health.aio.HealthServicer
    replica_id: str
    replicas: ReplicaStore
    leadership: Leadership
    relay: Relay
    keys: KeyStore
    replica_key_id: str
    agent_port: int = 0   # the mutual-TLS listener for agents (agent_listen), 0 without one
    http: HttpServer | None = None   # /metrics and the dashboard (http_listen), None without
    metrics: ControlPlaneMetrics | None = None

    @property
    def http_port(self) -> int:
        """The HTTP side's bound port; 0 without one."""
        return 0 if self.http is None else self.http.port

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await self.http.stop()
        self.scheduler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.scheduler_task
        await self.server.stop(grace_s)
        await self.leadership.release()   # the next replica leads at once
        with contextlib.suppress(Exception):   # a database that is gone forgets nothing
            await self.replicas.remove(self.replica_id)
            if self.replica_key_id:
                await self.keys.delete(self.replica_key_id)
        await self.relay.close()
        await self.database.close()


async def start(
    settings: ControlPlaneSettings,
    clock: Clock | None = None,
    extra_services: Sequence[ServiceInstaller] = (),
) -> RunningControlPlane:
    clock = clock or SystemClock()
    problem = transport_problem(settings)
    if problem is not None:
        raise SettingsError(problem)
    # Read before anything starts: a missing file stops the start with its flag's name.
    credentials = _server_credentials(settings)
    agent_credentials = _agent_credentials(settings)
    timers = Timers(
        timedelta(seconds=settings.stale_after_s),
        timedelta(seconds=settings.lost_after_s),
        clock.now(),
    )
    database = Database(settings.database_url)
    if settings.migrate:
        await database.migrate()
    jobs, dataplanes, policies = JobStore(database), DataplaneStore(database), PolicyStore(database)
    metrics = ControlPlaneMetrics(FleetStats(database), timers, clock)
    replicas, leadership = ReplicaStore(database), Leadership(database)
    replica_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    keys, tokens, audit_log = KeyStore(database), JoinTokens(database), AuditLog(database)
    limits = None
    if settings.rate_limit_per_s > 0:
        limits = RateLimits(settings.rate_limit_per_s, max(1.0, 2 * settings.rate_limit_per_s))
    access = Access(keys, tokens, audit_log, clock, enabled=settings.auth, limits=limits)
    relay = Relay(
        replicas, replica_id,
        credentials=self_credentials(settings), server_name=settings.tls_server_name,
    )
    replica_key_id = ""
    if settings.auth:   # the key this replica presents to the others
        replica_key, secret = await keys.create(
            f"replica-{replica_id}"[:128], Role.REPLICA, [ALL_PROJECTS], replica_id, clock.now()
        )
        replica_key_id = replica_key.id
        relay.use_key(secret)
    hub = SessionHub(relay)
    scheduler = Scheduler(
        SchedulingStore(database),
        dataplanes,
        policies,
        hub,
        clock,
        timers,
        leadership=leadership,
        interval_s=settings.schedule_interval_s,
        metrics=metrics,
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorTranslation()]
    if settings.tls_client_ca:
        interceptors.append(AgentCertificates())
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(
        JobService(jobs, dataplanes, scheduler, hub, clock, access, relay, metrics), server
    )
    web_sources = WebSources(
        access, jobs, dataplanes, policies, scheduler, hub, relay, clock, timers, metrics
    )
    replica_pb2_grpc.add_ReplicaServiceServicer_to_server(ReplicaService(hub, access), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentService(
            dataplanes,
            scheduler,
            hub,
            clock,
            access=access,
            heartbeat_interval=timedelta(seconds=settings.heartbeat_interval_s),
            replicas=replicas,
            replica_id=replica_id,
            metrics=metrics,
        ),
        server,
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminService(
            dataplanes, clock, timers, scheduler, access, tokens, keys, audit_log, hub
        ),
        server,
    )
    admin_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyService(policies, jobs, dataplanes, scheduler, clock, access), server
    )
    names = list(SERVICE_NAMES)
    for install in extra_services:
        names.extend(install(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port, agent_port = _add_ports(server, settings, credentials, agent_credentials)
    http = await _start_http(settings, web_sources, database)
    await server.start()
    await replicas.register(replica_id, advertised(settings, port), clock.now())
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")
    log.info(
        "control plane listening on port %d (%s)%s, database %s",
        port,
        "PLAINTEXT" if credentials is None else "TLS",
        f", agents with client certificates on port {agent_port}" if agent_port else "",
        redact(database.url),
    )
    if settings.port_file:
        Path(settings.port_file).write_text(f"{port}\n")
    return RunningControlPlane(
        port, server, database, scheduler, scheduler_task, health_servicer, replica_id,
        replicas, leadership, relay, keys, replica_key_id, agent_port, http, metrics,
    )


async def _start_http(
    settings: ControlPlaneSettings, sources: WebSources, database: Database
) -> HttpServer | None:
    """The HTTP side (/metrics, the dashboard) when http_listen is set: HTTPS with the
    certificate the gRPC side serves, plaintext where that side is plaintext."""
    if not settings.http_listen:
        return None
    try:
        tls = None
        if not settings.insecure and settings.tls_cert and settings.tls_key:
            tls = tls_context(settings.tls_cert, settings.tls_key)
        return await start_http(
            make_app(sources), settings.http_listen, tls, port_file=settings.http_port_file
        )
    except HttpListenError as error:
        await database.close()   # nothing else has started yet
        raise SettingsError(str(error)) from None


# -- transport security -----------------------------------------------------------------------


def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(f"{option}: cannot read {path}: {error.strerror}") from None


def _server_credentials(settings: ControlPlaneSettings) -> grpc.ServerCredentials | None:
    """The main port's credentials: TLS without client certificates; None is plaintext
    (settings.insecure, checked by transport_problem)."""
    if settings.insecure or not settings.tls_cert or not settings.tls_key:
        return None
    key_pair = (_read(settings.tls_key, "--tls-key"), _read(settings.tls_cert, "--tls-cert"))
    return grpc.ssl_server_credentials([key_pair])


def _agent_credentials(settings: ControlPlaneSettings) -> grpc.ServerCredentials | None:
    """The agent port's: the same certificate, and a client certificate required and
    verified against the client CA; None without a client CA (no agent port)."""
    if not settings.tls_client_ca or not settings.tls_cert or not settings.tls_key:
        return None
    key_pair = (_read(settings.tls_key, "--tls-key"), _read(settings.tls_cert, "--tls-cert"))
    return grpc.ssl_server_credentials(
        [key_pair],
        root_certificates=_read(settings.tls_client_ca, "--tls-client-ca"),
        require_client_auth=True,
    )


def self_credentials(settings: ControlPlaneSettings) -> grpc.ChannelCredentials | None:
    """How this control plane dials its own kind (replicas, itself): TLS trusting tls_ca,
    else its own certificate file; None when it serves plaintext."""
    if settings.insecure or not settings.tls_cert:
        return None
    if settings.tls_ca:
        return grpc.ssl_channel_credentials(_read(settings.tls_ca, "--tls-ca"))
    return grpc.ssl_channel_credentials(_read(settings.tls_cert, "--tls-cert"))


def _add_ports(
    server: grpc.aio.Server,
    settings: ControlPlaneSettings,
    credentials: grpc.ServerCredentials | None,
    agent_credentials: grpc.ServerCredentials | None,
) -> tuple[int, int]:
    """Bind the main port (and the agents' mutual-TLS port); return the bound ports."""
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
        if not is_loopback(settings.listen):
            log.warning(
                "PLAINTEXT on %s (--insecure): anyone on the network can read and forge "
                "every call, keys and join tokens included. Serve TLS (--tls-cert, "
                "--tls-key) unless a service mesh terminates TLS in front of this port.",
                settings.listen,
            )
    else:
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise SettingsError(f"listen: cannot bind {settings.listen}")
    agent_port = 0
    if agent_credentials is not None:
        agent_port = server.add_secure_port(settings.agent_listen, agent_credentials)
        if agent_port == 0:
            raise SettingsError(f"agent listen: cannot bind {settings.agent_listen}")
    return port, agent_port


def advertised(settings: ControlPlaneSettings, port: int) -> str:
    """Where other replicas reach this one: --advertise, else the listen address (with the
    bound port, and the host name when listening on every interface)."""
    if settings.advertise:
        return settings.advertise
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


# Python's defaults collect the young generation every 700 new container objects. A busy
# control plane makes thousands per report, pass and message, nearly none in cycles, and
# spent about a fifth of its CPU collecting (bench/RESULTS.md, 2026-11-25): end to end went
# from ~1,300 to ~1,750 jobs/s with these. Full collections still run, about every 5
# million allocations.
GC_THRESHOLDS = (50_000, 10, 10)


def tune_garbage_collector() -> None:
    """Collect less often, and never scan what exists once started (modules, the schema,
    compiled statements): gc.freeze moves it out of every generation."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(settings: ControlPlaneSettings, extra_services: Sequence[ServiceInstaller] = ()) -> None:
    """Run until SIGINT or SIGTERM."""
    asyncio.run(_serve(settings, extra_services))


async def _serve(
    settings: ControlPlaneSettings, extra_services: Sequence[ServiceInstaller]
) -> None:
    running = await start(settings, extra_services=extra_services)
    tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await running.stop()
