"""Wiring: the registry, the scheduler, the servicers and one grpc.aio server.

`start()` returns a running control plane (tests use it in-process); `serve()` is the
blocking entry point of `fleet control-plane`, stopping cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from control_plane.api.admin import AdminService
from control_plane.api.agents import AgentService
from control_plane.api.errors import ErrorTranslation
from control_plane.api.jobs import JobService
from control_plane.api.policy import PolicyService
from control_plane.api.replicas import ReplicaService
from control_plane.clock import Clock, SystemClock
from control_plane.domain.health import Timers
from control_plane.registry import (
    Database,
    DataplaneStore,
    JobStore,
    Leadership,
    PolicyStore,
    ReplicaStore,
    SchedulingStore,
    redact,
)
from control_plane.relay import Relay
from control_plane.scheduler import Scheduler
from control_plane.sessions import SessionHub
from control_plane.settings import ControlPlaneSettings

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

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        self.scheduler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.scheduler_task
        await self.server.stop(grace_s)
        await self.leadership.release()   # the next replica leads at once
        with contextlib.suppress(Exception):   # a database that is gone forgets nothing
            await self.replicas.remove(self.replica_id)
        await self.relay.close()
        await self.database.close()


async def start(
    settings: ControlPlaneSettings,
    clock: Clock | None = None,
    extra_services: Sequence[ServiceInstaller] = (),
) -> RunningControlPlane:
    clock = clock or SystemClock()
    if not settings.join_token:
        raise SettingsError("join token: required (--join-token or FLEET_JOIN_TOKEN)")
    timers = Timers(
        timedelta(seconds=settings.stale_after_s),
        timedelta(seconds=settings.lost_after_s),
        clock.now(),
    )
    database = Database(settings.database_url)
    if settings.migrate:
        await database.migrate()
    jobs, dataplanes, policies = JobStore(database), DataplaneStore(database), PolicyStore(database)
    replicas, leadership = ReplicaStore(database), Leadership(database)
    replica_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    relay = Relay(replicas, replica_id, settings.join_token)
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
    )
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[ErrorTranslation()])
    jobs_pb2_grpc.add_JobServiceServicer_to_server(
        JobService(jobs, dataplanes, scheduler, hub, clock, relay), server
    )
    replica_pb2_grpc.add_ReplicaServiceServicer_to_server(
        ReplicaService(hub, settings.join_token), server
    )
    agent_pb2_grpc.add_AgentServiceServicer_to_server(
        AgentService(
            dataplanes,
            scheduler,
            hub,
            clock,
            join_token=settings.join_token,
            heartbeat_interval=timedelta(seconds=settings.heartbeat_interval_s),
            replicas=replicas,
            replica_id=replica_id,
        ),
        server,
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminService(dataplanes, clock, timers, scheduler), server
    )
    admin_pb2_grpc.add_PolicyServiceServicer_to_server(
        PolicyService(policies, jobs, dataplanes, scheduler, clock), server
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
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise SettingsError(f"listen: cannot bind {settings.listen}")
    await server.start()
    await replicas.register(replica_id, advertised(settings, port), clock.now())
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")
    log.info("control plane listening on port %d, database %s", port, redact(database.url))
    if settings.port_file:
        Path(settings.port_file).write_text(f"{port}\n")
    return RunningControlPlane(
        port, server, database, scheduler, scheduler_task, health_servicer, replica_id,
        replicas, leadership, relay,
    )


def advertised(settings: ControlPlaneSettings, port: int) -> str:
    """Where other replicas reach this one: --advertise, else the listen address (with the
    bound port, and the host name when listening on every interface)."""
    if settings.advertise:
        return settings.advertise
    host = settings.listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def serve(settings: ControlPlaneSettings, extra_services: Sequence[ServiceInstaller] = ()) -> None:
    """Run until SIGINT or SIGTERM."""
    asyncio.run(_serve(settings, extra_services))


async def _serve(
    settings: ControlPlaneSettings, extra_services: Sequence[ServiceInstaller]
) -> None:
    running = await start(settings, extra_services=extra_services)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await running.stop()
