"""The connector as flytekit and propeller call it, against a real control plane and agent.

Through flytekit's ConnectorRegistry (what local runs and `pyflyte serve connector` use) and
through flytekit's connector gRPC services installed on a server of ours (what propeller calls).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fleet.v1 import types_pb2 as P
from flyteidl.admin import agent_pb2
from flyteidl.core.execution_pb2 import TaskExecution
from flyteidl.service import agent_pb2_grpc
from flytekit import Resources, task
from flytekit.extend.backend.base_connector import ConnectorRegistry, Resource
from flytekit.extras.accelerators import H100, L4

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient
from flyte_plugin import Fleet, FleetConnector, FleetMetadata, FleetRejected
from flyte_plugin.connector_service import install
from tests.flyte import workflows
from tests.flyte.flyte_models import attempt_metadata, literals, template_of
from tests.flyte.harness import CPU_POOL, gpu_pool, pool_file, running_fleet, wait_until

pytestmark = pytest.mark.e2e

FINAL = {
    TaskExecution.SUCCEEDED,
    TaskExecution.FAILED,
    TaskExecution.RETRYABLE_FAILED,
    TaskExecution.ABORTED,
}
RUNNING = TaskExecution.RUNNING


@task(task_config=Fleet(), requests=Resources(gpu="1"), accelerator=L4)
def needs_l4() -> int:
    return 0


@task(task_config=Fleet(), accelerator=H100)
def model_without_gpus() -> int:
    return 0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    agents = {
        "gpu-east": pool_file("gpu-east", "us-east-1", [gpu_pool("h100", "H100", 2), CPU_POOL])
    }
    with running_fleet(tmp_path_factory.mktemp("connector"), agents) as running:
        yield running


@pytest.fixture
def connector(fleet: LocalFleet) -> FleetConnector:
    found = ConnectorRegistry.get_connector("fleet")
    assert isinstance(found, FleetConnector)
    return found


@pytest.fixture
def client(fleet: LocalFleet) -> Iterator[FleetClient]:
    with fleet.client(timeout_s=10) as fleet_client:
        yield fleet_client


def follow(connector: FleetConnector, meta: FleetMetadata, fleet: LocalFleet) -> Resource:
    """get() until the job ends, as flytekit's local executor polls it."""
    last: list[Resource] = []

    def ended() -> bool:
        last.append(connector.get(meta))
        return last[-1].phase in FINAL

    wait_until(ended, 120, f"job {meta.job_id} to end", fleet)
    return last[-1]


def test_the_registry_finds_the_fleet_connector() -> None:
    found = ConnectorRegistry.get_connector("fleet")
    assert isinstance(found, FleetConnector)
    assert found.name == "Fleet Connector"
    names = [agent.name for agent in ConnectorRegistry.list_connectors()]
    assert "Fleet Connector" in names


def test_create_submits_one_job_per_flyte_attempt(
    connector: FleetConnector, client: FleetClient, fleet: LocalFleet
) -> None:
    template = template_of(workflows.add_one)
    inputs = literals(workflows.add_one, x=1)
    metadata = attempt_metadata(project="ml", domain="staging", execution="exec1", node_id="n3")
    first = connector.create(template, "s3://ignored/prefix", inputs, metadata)
    again = connector.create(template, "s3://ignored/prefix", inputs, metadata)
    retry = connector.create(
        template, "s3://ignored/prefix", inputs, attempt_metadata("ml", "staging", "exec1", "n3", 1)
    )
    try:
        assert again.job_id == first.job_id, "a repeated create returns the same job"
        assert retry.job_id != first.job_id, "a Flyte retry is a new job"
        job = client.get(first.job_id)
        assert job.client_key == "flyte/ml/staging/exec1/n3/0"
        assert (job.spec.project, job.spec.domain) == ("ml", "staging")
        assert job.spec.name == "tests.flyte.workflows.add_one"
        assert job.spec.resources.gpus == 1 and job.spec.resources.gpu_model == "H100"
        assert dict(job.spec.labels) == {"team": "tests"} and job.spec.priority == 2
        assert job.retry_budget == 0, "Flyte owns retries"
        assert "{{.input}}" in job.spec.command and "{{.outputPrefix}}" in job.spec.command
        assert job.spec.inputs == inputs.to_flyte_idl().SerializeToString()
    finally:
        for meta in (first, retry):
            connector.delete(meta)


def test_get_follows_a_job_to_success_and_returns_its_outputs(
    connector: FleetConnector, fleet: LocalFleet
) -> None:
    meta = connector.create(
        template_of(workflows.add_one), "", literals(workflows.add_one, x=41), None
    )
    resource = follow(connector, meta, fleet)
    assert TaskExecution.Phase.Name(resource.phase) == "SUCCEEDED", resource.message
    assert resource.outputs is not None
    assert resource.outputs.literals["o0"].scalar.primitive.integer == 42


def test_get_reports_a_user_error_as_a_failure_with_its_message(
    connector: FleetConnector, fleet: LocalFleet
) -> None:
    meta = connector.create(
        template_of(workflows.fail_with), "", literals(workflows.fail_with, text="nan-loss"), None
    )
    resource = follow(connector, meta, fleet)
    assert TaskExecution.Phase.Name(resource.phase) == "FAILED", resource.message
    assert "the model diverged: nan-loss" in (resource.message or "")


def test_delete_cancels_a_running_job_and_is_idempotent(
    connector: FleetConnector, client: FleetClient, fleet: LocalFleet, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    meta = connector.create(
        template_of(workflows.sleep_long),
        "",
        literals(workflows.sleep_long, pid_file=str(pid_file)),
        None,
    )

    def running_or_over() -> Resource | None:
        resource = connector.get(meta)
        started = resource.phase == RUNNING and pid_file.exists()
        return resource if started or resource.phase in FINAL else None

    running = wait_until(running_or_over, 120, "the task to run", fleet)
    assert TaskExecution.Phase.Name(running.phase) == "RUNNING", running.message
    connector.delete(meta)
    resource = follow(connector, meta, fleet)
    assert TaskExecution.Phase.Name(resource.phase) == "ABORTED"
    assert client.get(meta.job_id).phase == P.JOB_PHASE_CANCELLED
    connector.delete(meta)  # again: fine
    connector.delete(FleetMetadata(job_id="no-such-job"))  # unknown: fine


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        (needs_l4, "no dataplane has GPU model 'L4'"),
        (model_without_gpus, "resources.gpu_model: given, but resources.gpus is 0"),
    ],
    ids=["no-such-gpu", "model-without-gpus"],
)
def test_a_refused_task_says_why_in_the_control_planes_words(
    connector: FleetConnector, refused: Any, reason: str
) -> None:
    with pytest.raises(FleetRejected, match=reason) as raised:
        connector.create(template_of(refused), "", None, None)
    assert refused.name in str(raised.value)


def test_metadata_is_ids_only() -> None:
    meta = FleetMetadata(job_id="j-123")
    assert meta.encode() == b'{"job_id": "j-123"}'
    assert FleetMetadata.decode(meta.encode()) == meta


# -- the connector services propeller calls -------------------------------------------------


async def test_propeller_reaches_the_connector_through_installed_services(
    fleet: LocalFleet, client: FleetClient, connector: FleetConnector
) -> None:
    server = grpc.aio.server()
    names = install(server, fleet_address=fleet.address, tls=fleet.client_tls)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        assert names == [
            "flyteidl.service.AsyncAgentService",
            "flyteidl.service.SyncAgentService",
            "flyteidl.service.AgentMetadataService",
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            metadata_service = agent_pb2_grpc.AgentMetadataServiceStub(channel)
            tasks = agent_pb2_grpc.AsyncAgentServiceStub(channel)

            agent = (
                await metadata_service.GetAgent(agent_pb2.GetAgentRequest(name="Fleet Connector"))
            ).agent
            assert [c.name for c in agent.supported_task_categories] == ["fleet"]
            assert not agent.is_sync
            listed = await metadata_service.ListAgents(agent_pb2.ListAgentsRequest())
            assert [a.name for a in listed.agents] == ["Fleet Connector"], "not flytekit's sensor"
            with pytest.raises(grpc.aio.AioRpcError) as not_ours:
                await metadata_service.GetAgent(agent_pb2.GetAgentRequest(name="Sensor"))
            assert not_ours.value.code() == grpc.StatusCode.NOT_FOUND

            template = template_of(workflows.sleep_long).to_flyte_idl()
            request = agent_pb2.CreateTaskRequest(
                template=template,
                inputs=literals(workflows.sleep_long, pid_file="/dev/null").to_flyte_idl(),
                output_prefix="s3://flyte/metadata/propeller/abc",
                task_execution_metadata=attempt_metadata(
                    execution="grpc1", node_id="n1"
                ).to_flyte_idl(),
            )
            created = await tasks.CreateTask(request)
            created_again = await tasks.CreateTask(request)
            assert created_again.resource_meta == created.resource_meta
            meta = FleetMetadata.decode(created.resource_meta)
            assert client.get(meta.job_id).client_key == "flyte/ml/production/grpc1/n1/0"

            category = agent_pb2.TaskCategory(name="fleet", version=0)
            got = await tasks.GetTask(
                agent_pb2.GetTaskRequest(
                    task_category=category, resource_meta=created.resource_meta
                )
            )
            assert got.resource.phase in (
                TaskExecution.WAITING_FOR_RESOURCES,
                TaskExecution.QUEUED,
                TaskExecution.RUNNING,
            )
            await tasks.DeleteTask(
                agent_pb2.DeleteTaskRequest(
                    task_category=category, resource_meta=created.resource_meta
                )
            )
            assert client.get(meta.job_id).phase == P.JOB_PHASE_CANCELLED

            refused = agent_pb2.CreateTaskRequest(template=template_of(needs_l4).to_flyte_idl())
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await tasks.CreateTask(refused)
            assert "no dataplane has GPU model 'L4'" in (error.value.details() or "")
    finally:
        connector.address_override = None
        await server.stop(0)
