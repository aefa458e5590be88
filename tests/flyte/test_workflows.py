"""Real workflows run the way an ML engineer runs them locally: call the @workflow function.

Each fleet task goes through FleetTask.execute -> the fleet connector -> a real control plane
(on SQLite and on Postgres) -> a real agent, which runs it with pyflyte-execute.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet.v1 import types_pb2 as P
from flytekit.exceptions.user import FlyteUserException
from flytekit.extend.backend.base_connector import ConnectorRegistry

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient
from flyte_plugin import FleetMetadata
from tests.flyte import workflows
from tests.flyte.harness import CPU_POOL, gpu_pool, pool_file, running_fleet, wait_until
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    """One fleet for the module, once on each database (the suite's database_url fixture is
    per test; starting a fleet per test would triple this module's time)."""
    root = tmp_path_factory.mktemp(f"workflows-{request.param}")
    agents = {"gpu-east": pool_file("gpu-east", "us-east-1", [gpu_pool("h100", "H100"), CPU_POOL])}
    if request.param == "sqlite":
        with running_fleet(root, agents, f"sqlite+aiosqlite:///{root / 'fleet.db'}") as running:
            yield running
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    database = server.create_database(hint="flyte_workflows")
    try:
        with running_fleet(root, agents, server.url(database)) as running:
            yield running
    finally:
        server.drop_database(database)


@pytest.fixture
def client(fleet: LocalFleet) -> Iterator[FleetClient]:
    with fleet.client(timeout_s=10) as fleet_client:
        yield fleet_client


def jobs_named(client: FleetClient, task_name: str) -> list[P.Job]:
    name = f"tests.flyte.workflows.{task_name}"
    return [client.get(j.id) for j in client.iter_jobs() if j.spec.name == name]


def test_outputs_flow_between_two_fleet_tasks(fleet: LocalFleet, client: FleetClient) -> None:
    assert workflows.add_then_double(x=20) == 42
    [add_one] = jobs_named(client, "add_one")
    [double] = jobs_named(client, "double")
    assert add_one.phase == P.JOB_PHASE_SUCCEEDED and double.phase == P.JOB_PHASE_SUCCEEDED
    assert (add_one.dataplane, add_one.pool) == ("gpu-east", "h100")
    assert add_one.spec.resources.gpu_model == "H100"


def test_a_user_exception_fails_the_workflow_with_its_message(
    fleet: LocalFleet, client: FleetClient
) -> None:
    marker = f"loss-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FlyteUserException) as raised:
        workflows.failing(text=marker)
    assert f"the model diverged: {marker}" in str(raised.value)
    [job] = [j for j in jobs_named(client, "fail_with") if marker in j.message]
    assert job.phase == P.JOB_PHASE_FAILED
    assert len(job.attempts) == 1, "the fleet does not retry: Flyte owns retries"


def test_a_task_the_fleet_can_never_run_fails_with_the_control_planes_reason(
    fleet: LocalFleet,
) -> None:
    with pytest.raises(Exception, match="no dataplane has GPU model 'L4'") as raised:
        workflows.on_an_l4()
    assert "refused task tests.flyte.workflows.needs_an_l4" in str(raised.value)


def test_delete_stops_a_running_task(
    fleet: LocalFleet, client: FleetClient, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            workflows.sleeping(pid_file=str(pid_file))
        except BaseException as error:
            failure.append(error)

    local_run = threading.Thread(target=run, name="local-workflow")
    local_run.start()
    try:

        def running_job() -> P.Job | None:
            if not local_run.is_alive():
                raise AssertionError(f"the local run ended before its task ran: {failure}")
            running = [
                j for j in jobs_named(client, "sleep_long") if j.phase == P.JOB_PHASE_RUNNING
            ]
            return running[0] if running and pid_file.exists() else None

        job = wait_until(running_job, 120, "the task to run", fleet)
        pid = int(pid_file.read_text())
        assert process_alive(pid)
        ConnectorRegistry.get_connector("fleet").delete(FleetMetadata(job_id=job.id))
    finally:
        local_run.join(120)
    assert not local_run.is_alive(), "the local run ends once its task is aborted"
    assert failure and isinstance(failure[0], FlyteUserException)
    assert client.get(job.id).phase == P.JOB_PHASE_CANCELLED
    wait_until(lambda: not process_alive(pid), 30, "the task's process to end", fleet)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
