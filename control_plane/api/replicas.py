"""ReplicaService: other control-plane replicas hand over messages for the agents whose
streams this replica holds (see replica.proto)."""

from __future__ import annotations

import hmac

import grpc
from fleet.v1 import replica_pb2, replica_pb2_grpc

from control_plane.api.errors import Context, refuse
from control_plane.relay import TOKEN_HEADER
from control_plane.sessions import SessionHub


def presented_token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_HEADER:
            return str(value)
    return ""


class ReplicaService(replica_pb2_grpc.ReplicaServiceServicer):
    def __init__(self, hub: SessionHub, join_token: str) -> None:
        self._hub = hub
        self._join_token = join_token

    async def Deliver(
        self, request: replica_pb2.DeliverRequest, context: Context
    ) -> replica_pb2.DeliverResponse:
        if not hmac.compare_digest(presented_token(context), self._join_token):
            await refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"metadata {TOKEN_HEADER}: not the fleet's join token")
        delivered = all(self._hub.send_here(request.dataplane, m) for m in request.messages)
        return replica_pb2.DeliverResponse(delivered=delivered)
