"""AdminService: what operators see of the fleet, and cordon / drain / uncordon."""

from __future__ import annotations

from datetime import timedelta
from typing import NoReturn

import grpc
from fleet.v1 import admin_pb2, admin_pb2_grpc

from control_plane.api.errors import Context, refuse
from control_plane.api.validation import name_problem
from control_plane.clock import Clock
from control_plane.domain.cordon import MAX_REASON
from control_plane.domain.health import Timers
from control_plane.domain.records import DataplaneRecord
from control_plane.registry import DataplaneStore
from control_plane.scheduler import Scheduler
from control_plane.wire import dataplane_to_proto

MAX_DRAIN_DEADLINE = timedelta(days=30)


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        dataplanes: DataplaneStore,
        clock: Clock,
        timers: Timers,
        scheduler: Scheduler,
    ) -> None:
        self._dataplanes = dataplanes
        self._clock = clock
        self._timers = timers
        self._scheduler = scheduler

    async def ListDataplanes(
        self, request: admin_pb2.ListDataplanesRequest, context: Context
    ) -> admin_pb2.ListDataplanesResponse:
        return admin_pb2.ListDataplanesResponse(
            dataplanes=[
                self._to_proto(record) for record in await self._dataplanes.list_dataplanes()
            ]
        )

    async def CordonDataplane(
        self, request: admin_pb2.CordonDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        await self._check(request.name, request.reason, context)
        if not await self._dataplanes.cordon(
            request.name, request.reason, None, self._clock.now()
        ):
            await self._unknown(request.name, context)
        return await self._get(request.name, context)

    async def DrainDataplane(
        self, request: admin_pb2.DrainDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        await self._check(request.name, request.reason, context)
        deadline = request.deadline.ToTimedelta()
        if deadline < timedelta(0) or deadline > MAX_DRAIN_DEADLINE:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"deadline: {deadline} is not between 0 and {MAX_DRAIN_DEADLINE.days} days",
            )
        now = self._clock.now()
        if not await self._dataplanes.cordon(request.name, request.reason, now + deadline, now):
            await self._unknown(request.name, context)
        self._scheduler.wake()   # a deadline of 0 preempts at once
        return await self._get(request.name, context)

    async def UncordonDataplane(
        self, request: admin_pb2.UncordonDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        await self._check(request.name, "", context)
        if not await self._dataplanes.uncordon(request.name):
            await self._unknown(request.name, context)
        self._scheduler.wake()
        return await self._get(request.name, context)

    async def _check(self, name: str, reason: str, context: Context) -> None:
        problem = name_problem("name", name)
        if problem is None and len(reason) > MAX_REASON:
            problem = f"reason: longer than {MAX_REASON} characters"
        if problem is not None:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _unknown(self, name: str, context: Context) -> NoReturn:
        await refuse(context, grpc.StatusCode.NOT_FOUND, f"name: no dataplane named {name!r}")

    async def _get(self, name: str, context: Context) -> admin_pb2.Dataplane:
        for record in await self._dataplanes.list_dataplanes():
            if record.name == name:
                return self._to_proto(record)
        await self._unknown(name, context)

    def _to_proto(self, record: DataplaneRecord) -> admin_pb2.Dataplane:
        health = self._timers.health(record.last_heartbeat_at, self._clock.now())
        return dataplane_to_proto(record, health, record.connected)
