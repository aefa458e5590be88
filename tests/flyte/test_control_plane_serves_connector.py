"""`fleet control-plane --flyte-connector`: propeller points at the control plane's own port
and finds the Fleet Connector there, next to the fleet's JobService."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient, FleetError
from tests.flyte.harness import wait_until

pytestmark = pytest.mark.e2e


def test_the_control_plane_serves_the_fleet_connector(tmp_path: Path) -> None:
    with LocalFleet(tmp_path, heartbeat_interval_s=0.5, flyte_connector=True) as fleet:
        fleet.start_control_plane()
        with FleetClient(fleet.address, timeout_s=5) as client:
            wait_until(lambda: _answers(client), 60, "the control plane to answer", fleet)
        with grpc.insecure_channel(fleet.address) as channel:
            metadata = agent_pb2_grpc.AgentMetadataServiceStub(channel)
            listed = metadata.ListAgents(agent_pb2.ListAgentsRequest(), timeout=10)
            assert [a.name for a in listed.agents] == ["Fleet Connector"]
            categories = [c.name for c in listed.agents[0].supported_task_categories]
            assert categories == ["fleet"]
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(
                health_pb2.HealthCheckRequest(service="flyteidl.service.AsyncAgentService"),
                timeout=10,
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _answers(client: FleetClient) -> bool:
    try:
        client.list_dataplanes()
    except FleetError:
        return False
    return True
