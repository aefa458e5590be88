"""AdminService: what operators see of the fleet."""

from __future__ import annotations

from fleet.v1 import admin_pb2, admin_pb2_grpc

from control_plane.api.errors import Context
from control_plane.clock import Clock
from control_plane.domain.health import Timers
from control_plane.registry import DataplaneStore
from control_plane.sessions import SessionHub
from control_plane.wire import dataplane_to_proto


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self, dataplanes: DataplaneStore, hub: SessionHub, clock: Clock, timers: Timers
    ) -> None:
        self._dataplanes = dataplanes
        self._hub = hub
        self._clock = clock
        self._timers = timers

    async def ListDataplanes(
        self, request: admin_pb2.ListDataplanesRequest, context: Context
    ) -> admin_pb2.ListDataplanesResponse:
        now = self._clock.now()
        connected = self._hub.connected()
        return admin_pb2.ListDataplanesResponse(
            dataplanes=[
                dataplane_to_proto(
                    record,
                    self._timers.health(record.last_heartbeat_at, now),
                    record.name in connected,
                )
                for record in await self._dataplanes.list_dataplanes()
            ]
        )
