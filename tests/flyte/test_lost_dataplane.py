"""A dataplane that goes silent mid-task: the fleet gives up on it (retry budget 0), and the
connector tells Flyte to retry the task as a system error, not to fail it for good."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from fleet.v1 import types_pb2 as P
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.extend.backend.base_connector import ConnectorRegistry, Resource

from flyte_plugin import FleetConnector
from tests.flyte import workflows
from tests.flyte.flyte_models import literals, template_of
from tests.flyte.harness import CPU_POOL, gpu_pool, pool_file, running_fleet, wait_until

pytestmark = pytest.mark.e2e


def test_a_lost_dataplane_is_a_retryable_failure(tmp_path: Path) -> None:
    agents = {
        # The task needs an H100: only "doomed" has one. "steady" keeps heartbeating, so the
        # control plane knows the silence is doomed's, not its own network's.
        "doomed": pool_file("doomed", "us-east-1", [gpu_pool("h100", "H100", 1)]),
        "steady": pool_file("steady", "us-west-2", [CPU_POOL]),
    }
    with running_fleet(tmp_path / "fleet", agents, stale_after_s=1, lost_after_s=2) as fleet:
        connector = ConnectorRegistry.get_connector("fleet")
        assert isinstance(connector, FleetConnector)
        pid_file = tmp_path / "pid"
        meta = connector.create(
            template_of(workflows.sleep_long),
            "",
            literals(workflows.sleep_long, pid_file=str(pid_file)),
            None,
        )
        wait_until(
            lambda: pid_file.exists() and connector.get(meta).phase == TaskExecution.RUNNING,
            120,
            "the task to run",
            fleet,
        )
        fleet.kill_agent("doomed", signal.SIGKILL)

        def ended() -> Resource | None:
            resource = connector.get(meta)
            return resource if resource.phase != TaskExecution.RUNNING else None

        resource = wait_until(
            ended, 60, "the control plane to give the dataplane up", fleet, all_alive=False
        )
        assert TaskExecution.Phase.Name(resource.phase) == "RETRYABLE_FAILED", resource.message
        with fleet.client() as client:
            job = client.get(meta.job_id)
        assert job.phase == P.JOB_PHASE_FAILED
        assert job.attempts[-1].phase == P.ATTEMPT_PHASE_LOST
        # The orphaned task process is stopped with the fleet (LocalFleet.stop).
