"""AdminService, dataplane side: what operators see of the fleet; enrolling dataplanes and
their join tokens; cordon, drain, uncordon. (API keys and the audit log: api/admin_keys.py.)
Every change is written to the audit log."""

from __future__ import annotations

from datetime import timedelta
from typing import NoReturn

import grpc
from fleet.v1 import admin_pb2, admin_pb2_grpc

from control_plane.api.access import Access
from control_plane.api.admin_keys import KeysAdmin
from control_plane.api.agents import REVOKED
from control_plane.api.errors import Context, refuse
from control_plane.api.validation import (
    check,
    duration_problem,
    enroll_problems,
    name_problem,
    text_problem,
)
from control_plane.clock import Clock
from control_plane.domain.access import Action
from control_plane.domain.health import Timers
from control_plane.domain.limits import MAX_DRAIN_DEADLINE, MAX_REASON, MAX_REGION
from control_plane.domain.records import DataplaneRecord
from control_plane.registry import AuditLog, DataplaneStore, JoinTokens, KeyStore
from control_plane.scheduler import Scheduler
from control_plane.sessions import SessionHub
from control_plane.wire import dataplane_to_proto


class AdminService(KeysAdmin, admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        dataplanes: DataplaneStore,
        clock: Clock,
        timers: Timers,
        scheduler: Scheduler,
        access: Access,
        tokens: JoinTokens,
        keys: KeyStore,
        audit_log: AuditLog,
        hub: SessionHub,
    ) -> None:
        super().__init__(access, keys, audit_log, clock)
        self._dataplanes = dataplanes
        self._timers = timers
        self._scheduler = scheduler
        self._tokens = tokens
        self._hub = hub

    async def ListDataplanes(
        self, request: admin_pb2.ListDataplanesRequest, context: Context
    ) -> admin_pb2.ListDataplanesResponse:
        await self._access.require(context, Action.VIEW_FLEET)
        return admin_pb2.ListDataplanesResponse(
            dataplanes=[
                self._to_proto(record) for record in await self._dataplanes.list_dataplanes()
            ]
        )

    # -- enrollment ------------------------------------------------------------------------

    async def EnrollDataplane(
        self, request: admin_pb2.EnrollDataplaneRequest, context: Context
    ) -> admin_pb2.JoinTokenResponse:
        caller = await self._access.require(context, Action.ADMIN)
        await check(context, enroll_problems(request))
        problem = name_problem("name", request.name)
        for field, value in (("region", request.region), ("cloud", request.cloud)):
            if problem is None and not 0 < len(value) <= MAX_REGION:
                problem = f"{field}: required, at most {MAX_REGION} characters"
        if problem is not None:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        token = await self._tokens.enroll(
            request.name, request.region, request.cloud, request.labels, self._clock.now()
        )
        if token is None:
            await refuse(
                context, grpc.StatusCode.ALREADY_EXISTS,
                f"name: dataplane {request.name!r} is enrolled already (rotate its token "
                "instead: fleet dataplanes rotate-token)",
            )
        await self._access.audit(
            caller, "dataplane.enroll", request.name, f"{request.region}, {request.cloud}"
        )
        return admin_pb2.JoinTokenResponse(
            dataplane=await self._get(request.name, context), join_token=token
        )

    async def RotateJoinToken(
        self, request: admin_pb2.RotateJoinTokenRequest, context: Context
    ) -> admin_pb2.JoinTokenResponse:
        caller = await self._access.require(context, Action.ADMIN)
        await self._check(request.name, "", context)
        token = await self._tokens.rotate(request.name, self._clock.now())
        if token is None:
            await self._unknown(request.name, context)
        await self._access.audit(caller, "dataplane.rotate-token", request.name)
        return admin_pb2.JoinTokenResponse(
            dataplane=await self._get(request.name, context), join_token=token
        )

    async def RevokeJoinToken(
        self, request: admin_pb2.RevokeJoinTokenRequest, context: Context
    ) -> admin_pb2.Dataplane:
        caller = await self._access.require(context, Action.ADMIN)
        await self._check(request.name, "", context)
        if not await self._tokens.revoke(request.name, self._clock.now()):
            await self._unknown(request.name, context)
        # Held here: closed now. Held by another replica: closed at its next heartbeat.
        session = self._hub.get(request.name)
        if session is not None:
            session.close(REVOKED)
        await self._access.audit(caller, "dataplane.revoke-token", request.name)
        return await self._get(request.name, context)

    # -- cordon and drain ------------------------------------------------------------------

    async def CordonDataplane(
        self, request: admin_pb2.CordonDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        caller = await self._access.require(context, Action.ADMIN)
        await self._check(request.name, request.reason, context)
        if not await self._dataplanes.cordon(
            request.name, request.reason, None, self._clock.now()
        ):
            await self._unknown(request.name, context)
        await self._access.audit(caller, "dataplane.cordon", request.name, request.reason)
        return await self._get(request.name, context)

    async def DrainDataplane(
        self, request: admin_pb2.DrainDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        caller = await self._access.require(context, Action.ADMIN)
        await self._check(request.name, request.reason, context)
        await check(context, [duration_problem("deadline", request.deadline)])
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
        await self._access.audit(
            caller, "dataplane.drain", request.name, f"deadline {deadline}; {request.reason}"
        )
        self._scheduler.wake()   # a deadline of 0 preempts at once
        return await self._get(request.name, context)

    async def UncordonDataplane(
        self, request: admin_pb2.UncordonDataplaneRequest, context: Context
    ) -> admin_pb2.Dataplane:
        caller = await self._access.require(context, Action.ADMIN)
        await self._check(request.name, "", context)
        if not await self._dataplanes.uncordon(request.name):
            await self._unknown(request.name, context)
        await self._access.audit(caller, "dataplane.uncordon", request.name)
        self._scheduler.wake()
        return await self._get(request.name, context)

    # -- helpers ---------------------------------------------------------------------------

    async def _check(self, name: str, reason: str, context: Context) -> None:
        await check(
            context, [name_problem("name", name), text_problem("reason", reason, MAX_REASON)]
        )

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
