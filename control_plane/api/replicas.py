"""ReplicaService: other control-plane replicas hand over messages for the agents whose
streams this replica holds (see replica.proto). Callers present their replica key."""

from __future__ import annotations

from fleet.v1 import replica_pb2, replica_pb2_grpc

from control_plane.api.access import Access
from control_plane.api.errors import Context
from control_plane.api.validation import check, deliver_problems
from control_plane.domain.access import Action
from control_plane.sessions import SessionHub


class ReplicaService(replica_pb2_grpc.ReplicaServiceServicer):
    def __init__(self, hub: SessionHub, access: Access) -> None:
        self._hub = hub
        self._access = access

    async def Deliver(
        self, request: replica_pb2.DeliverRequest, context: Context
    ) -> replica_pb2.DeliverResponse:
        await self._access.require(context, Action.RELAY)
        await check(context, deliver_problems(request))
        delivered = all(self._hub.send_here(request.dataplane, m) for m in request.messages)
        return replica_pb2.DeliverResponse(delivered=delivered)
