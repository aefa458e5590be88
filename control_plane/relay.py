"""Reaching agents whose stream another control-plane replica holds.

Control messages (launches, cancels) are handed to that replica's ReplicaService.Deliver;
a log request is the caller's JobService.Logs call, forwarded to that replica as it is.
Both are best effort for control messages: a message lost here is sent again when the
agent's next full heartbeat is reconciled against the registry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
from fleet.v1 import agent_pb2, jobs_pb2, jobs_pb2_grpc, replica_pb2, replica_pb2_grpc, types_pb2

from control_plane.registry import ReplicaStore

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
# Set on a forwarded Logs call: the replica it reaches answers from its own streams only.
RELAYED_HEADER = "x-fleet-relayed"
DELIVER_TIMEOUT_S = 5.0


class Relay:
    def __init__(
        self,
        replicas: ReplicaStore,
        replica_id: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
    ) -> None:
        self.replica_id = replica_id
        self._replicas = replicas
        # TLS to the other replicas (None: plaintext, as this one serves); server_name is
        # checked in their certificate instead of the advertised host (often a pod IP).
        self._credentials = credentials
        self._channel_options = (
            [("grpc.ssl_target_name_override", server_name)] if server_name else []
        )
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._channels: dict[str, grpc.aio.Channel] = {}

    def use_key(self, key: str) -> None:
        """This replica's own API key (role replica), presented to the others."""
        self._metadata = ((AUTHORIZATION, f"Bearer {key}"),)

    async def holder(self, dataplane: str) -> str | None:
        """The address of the other replica holding the dataplane's stream, if one does."""
        holder = await self._replicas.stream_holder(dataplane)
        if holder is None or holder[0] == self.replica_id:
            return None
        return holder[1]

    async def deliver(
        self, dataplane: str, messages: Sequence[agent_pb2.ControlMessage]
    ) -> bool:
        """Hand messages to the replica holding the dataplane's stream; False if none took
        them (the next heartbeat's reconcile sends what still matters)."""
        try:
            address = await self.holder(dataplane)
            if address is None:
                return False
            stub = replica_pb2_grpc.ReplicaServiceStub(self._channel(address))
            response = await stub.Deliver(
                replica_pb2.DeliverRequest(dataplane=dataplane, messages=messages),
                metadata=self._metadata, timeout=DELIVER_TIMEOUT_S,
            )
        except Exception as error:  # gRPC or the database: either way, the heartbeat heals
            log.info("could not relay %d messages to %s: %s", len(messages), dataplane, error)
            return False
        return bool(response.delivered)

    async def logs(
        self, address: str, request: jobs_pb2.JobLogsRequest
    ) -> AsyncIterator[types_pb2.LogChunk]:
        """The Logs call, answered by the replica at address (raises grpc.aio.AioRpcError)."""
        stub = jobs_pb2_grpc.JobServiceStub(self._channel(address))
        call = stub.Logs(request, metadata=(*self._metadata, (RELAYED_HEADER, "1")))
        async for chunk in call:
            yield chunk

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address)
            else:
                channel = grpc.aio.secure_channel(
                    address, self._credentials, options=self._channel_options
                )
            self._channels[address] = channel
        return channel
