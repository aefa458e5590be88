"""End to end: the control plane is killed -9 in the middle of a stream of submits and
restarted. Every acknowledged submit is still there, submits retried with their client key
after an unanswered call are not doubled, the agents keep running their jobs meanwhile and
reconcile after, and every job's command runs exactly once."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fleet.v1 import types_pb2

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient, FleetError
from tests.e2e.test_local_fleet import FINAL, RUN_RECORDER, pools
from tests.fleet_waits import wait_until

pytestmark = pytest.mark.e2e
P = types_pb2
JOBS = 24


def spec(i: int, runs: Path) -> types_pb2.JobSpec:
    return P.JobSpec(
        project="e2e", name=f"job-{i}",
        command=[sys.executable, "-c", RUN_RECORDER, str(runs), "1"],
        resources=P.Resources(gpus=1, gpu_model="H100"),
    )


def test_a_killed_control_plane_loses_no_acknowledged_job_and_runs_none_twice(
    tmp_path: Path, database_url: str
) -> None:
    runs = tmp_path / "runs.log"
    acknowledged: dict[int, str] = {}      # submit number -> job id, once answered
    with LocalFleet(
        tmp_path / "fleet", database_url=database_url, heartbeat_interval_s=0.5,
        stale_after_s=5, lost_after_s=30,
    ) as fleet:
        fleet.start_control_plane()
        fleet.add_agent("east", pools("east", "us-east-1", "reserved"))
        fleet.add_agent("west", pools("west", "us-west-2", "on_demand"))
        with fleet.client(timeout_s=5) as client:
            wait_until(lambda: _connected(client) == 2, 60, "both agents", fleet)

            def submit_all() -> None:
                """Like a careful client: an unanswered submit is retried with its key."""
                for i in range(JOBS):
                    while i not in acknowledged:
                        try:
                            acknowledged[i] = client.submit(spec(i, runs), f"key-{i}").job.id
                        except FleetError:
                            time.sleep(0.2)
                    time.sleep(0.05)

            submitter = threading.Thread(target=submit_all)
            submitter.start()
            wait_until(lambda: len(acknowledged) >= JOBS // 3, 60, "a third submitted", fleet)
            fleet.kill_control_plane(signal.SIGKILL)
            killed_after = len(acknowledged)
            time.sleep(1.0)                  # the agents go on alone meanwhile
            fleet.start_control_plane()
            submitter.join(120)
            assert not submitter.is_alive()

            jobs = wait_until(
                lambda: (js := [client.get(i) for i in acknowledged.values()])
                and all(j.phase in FINAL for j in js) and js,
                120, "every job to end", fleet,
            )
            listed = {j.id for j in client.list_jobs(project="e2e", page_size=1000).jobs}

    assert 0 < killed_after < JOBS
    assert len(set(acknowledged.values())) == JOBS, "a retried submit returned the same job"
    assert listed == set(acknowledged.values()), "nothing lost, nothing extra"
    assert [P.JobPhase.Name(j.phase) for j in jobs] == ["JOB_PHASE_SUCCEEDED"] * JOBS
    ran = Counter(runs.read_text().split()[0::2])
    assert ran == Counter({job_id: 1 for job_id in acknowledged.values()}), "ran exactly once"


def _connected(client: FleetClient) -> int:
    try:
        return len([d for d in client.list_dataplanes() if d.connected and d.pools])
    except FleetError:
        return 0
