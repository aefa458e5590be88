"""`fleet control-plane --flyte-connector`: propeller points at the control plane's own port
and finds the Fleet Connector there, next to the fleet's JobService."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from flyteidl.admin import agent_pb2
from flyteidl.service import agent_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet_cli.local_fleet import FleetTls, LocalFleet
from fleet_client import FleetClient, FleetError
from flyte_plugin import FleetMetadata
from tests.flyte import workflows
from tests.flyte.flyte_models import attempt_metadata, literals, template_of
from tests.flyte.harness import CPU_POOL, REPO, gpu_pool, pool_file, wait_until
from tests.tls_certs import CertificateAuthority

pytestmark = pytest.mark.e2e


def test_the_control_plane_serves_the_fleet_connector(tmp_path: Path) -> None:
    with LocalFleet(tmp_path, heartbeat_interval_s=0.5, flyte_connector=True) as fleet:
        fleet.start_control_plane()
        with fleet.client(timeout_s=5) as client:
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


def test_over_tls_the_connector_calls_back_into_the_control_plane_over_tls(
    tmp_path: Path,
) -> None:
    """Propeller speaks TLS to the control plane, and the connector it serves reaches the
    JobService through the same TLS port (trusting the fleet's CA: FLEET_TLS_CA)."""
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = ca.server("localhost", "127.0.0.1")
    tls = FleetTls(server.cert, server.key, ca.cert)
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5, flyte_connector=True,
                    tls=tls, python_path=(REPO,)) as fleet:  # fmt: skip
        fleet.start_control_plane()
        fleet.add_agent("east", pool_file("east", "us-east-1", [gpu_pool("h100", "H100", 2),
                                                                CPU_POOL]))  # fmt: skip
        with fleet.client(timeout_s=5) as client:
            wait_until(lambda: _has_pools(client), 60, "the agent to connect", fleet)
            credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes())
            with grpc.secure_channel(fleet.address, credentials) as channel:
                tasks = agent_pb2_grpc.AsyncAgentServiceStub(channel)
                request = agent_pb2.CreateTaskRequest(
                    template=template_of(workflows.sleep_long).to_flyte_idl(),
                    inputs=literals(workflows.sleep_long, pid_file="/dev/null").to_flyte_idl(),
                    output_prefix="s3://flyte/metadata/propeller/tls",
                    task_execution_metadata=attempt_metadata(
                        execution="tls1", node_id="n1"
                    ).to_flyte_idl(),
                )
                created = tasks.CreateTask(request, timeout=30)
            job = client.get(FleetMetadata.decode(created.resource_meta).job_id)
            assert job.client_key == "flyte/ml/production/tls1/n1/0"
            client.cancel(job.id)


def _has_pools(client: FleetClient) -> bool:
    try:
        return any(d.pools for d in client.list_dataplanes())
    except FleetError:
        return False

