"""flytekit's connector service (what ``pyflyte serve connector`` runs), on a server of ours.

The control plane serves it next to its own API (``fleet control-plane --flyte-connector``),
so propeller needs no separate connector deployment:

    server = grpc.aio.server()
    names = install(server, fleet_address="127.0.0.1:50051")

The services find connectors in flytekit's ConnectorRegistry, where importing flyte_plugin
registered the fleet's. The metadata service lists only the fleet's connector: flytekit
registers others at import (its sensor connector), and propeller must not take the control
plane for a place that runs those.
"""

# flytekit and flyteidl ship no type information (no py.typed): their names are Any here.
from __future__ import annotations

from typing import Any

import grpc
from flyteidl.admin import agent_pb2  # type: ignore[import-untyped]
from flyteidl.service import agent_pb2 as agent_service_pb2  # type: ignore[import-untyped]
from flyteidl.service.agent_pb2_grpc import (  # type: ignore[import-untyped]
    add_AgentMetadataServiceServicer_to_server,
    add_AsyncAgentServiceServicer_to_server,
    add_SyncAgentServiceServicer_to_server,
)
from flytekit.extend.backend.connector_service import (  # type: ignore[import-untyped]
    AsyncConnectorService,
    ConnectorMetadataService,
    SyncConnectorService,
)

from fleet_client import TlsConfig
from flyte_plugin.connector import CONNECTOR_NAME, register

_SERVICES = ("AsyncAgentService", "SyncAgentService", "AgentMetadataService")
SERVICE_NAMES: tuple[str, ...] = tuple(
    agent_service_pb2.DESCRIPTOR.services_by_name[name].full_name for name in _SERVICES
)


class FleetMetadataService(ConnectorMetadataService):  # type: ignore[misc]  # untyped base
    """flytekit's metadata service, showing only the fleet's connector."""

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.GetAgentResponse:
        if request.name != CONNECTOR_NAME:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no connector named {request.name!r}")
        return await super().GetAgent(request, context)

    async def ListAgents(
        self, request: agent_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb2.ListAgentsResponse:
        listed = await super().ListAgents(request, context)
        return agent_pb2.ListAgentsResponse(
            agents=[agent for agent in listed.agents if agent.name == CONNECTOR_NAME]
        )


def install(
    server: grpc.aio.Server, fleet_address: str | None = None, tls: TlsConfig | None = None
) -> list[str]:
    """Add flytekit's connector services to server; return their full service names.

    fleet_address: where the fleet connector reaches the JobService (the control plane's own
    listen address when it serves both); unset, FLEET_ADDRESS or 127.0.0.1:50051. tls: how
    (the control plane's own transport); unset, FLEET_TLS_CA / FLEET_INSECURE.
    """
    connector = register()
    if fleet_address is not None:
        connector.address_override = fleet_address
    if tls is not None:
        connector.tls_override = tls
    add_AsyncAgentServiceServicer_to_server(AsyncConnectorService(), server)
    add_SyncAgentServiceServicer_to_server(SyncConnectorService(), server)
    add_AgentMetadataServiceServicer_to_server(FleetMetadataService(), server)
    return list(SERVICE_NAMES)
