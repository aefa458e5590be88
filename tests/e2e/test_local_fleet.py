"""End to end: the control plane and two agents as real subprocesses of `fleet`, jobs as
real processes. An agent is killed -9 mid-run and restarted; it re-adopts what runs, and
every job ends exactly once with exactly one run of its command."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fleet.v1 import types_pb2

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient
from tests.fleet_waits import wait_until

pytestmark = pytest.mark.e2e
P = types_pb2
FINAL = {P.JOB_PHASE_SUCCEEDED, P.JOB_PHASE_FAILED, P.JOB_PHASE_CANCELLED}

# Appends one line per run (O_APPEND lines are atomic), then works for a few seconds.
RUN_RECORDER = (
    "import os, sys, time\n"
    "with open(sys.argv[1], 'a') as runs:\n"
    "    runs.write(os.environ['FLEET_JOB_ID'] + ' ' + os.environ['FLEET_ATTEMPT_ID'] + '\\n')\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def pools(name: str, region: str, tier: str) -> dict[str, object]:
    return {
        "dataplane": {"name": name, "region": region, "cloud": "test"},
        "pools": [
            {
                "name": "h100",
                "purchase_type": tier,
                "gpu_model": "H100",
                "gpu_memory_gb": 80,
                "gpu_count": 4,
            }
        ],
    }


def test_agent_killed_and_restarted_reattaches_and_every_job_ends_once(
    tmp_path: Path, database_url: str
) -> None:
    runs = tmp_path / "runs.log"
    with LocalFleet(
        tmp_path / "fleet",
        database_url=database_url,
        heartbeat_interval_s=0.5,
        stale_after_s=5,
        lost_after_s=30,
    ) as fleet:
        fleet.start_control_plane()
        fleet.add_agent("east", pools("east", "us-east-1", "reserved"))
        fleet.add_agent("west", pools("west", "us-west-2", "on_demand"))
        with fleet.client(timeout_s=10) as client:
            wait_until(
                lambda: len([d for d in _dataplanes(client) if d.connected and d.pools]) == 2,
                60,
                "both agents to connect",
                fleet,
            )
            ids = [
                client.submit(
                    P.JobSpec(
                        project="e2e",
                        name=f"job-{i}",
                        command=[sys.executable, "-c", RUN_RECORDER, str(runs), "4"],
                        resources=P.Resources(gpus=1, gpu_model="H100"),
                    )
                ).job.id
                for i in range(8)
            ]
            wait_until(
                lambda: sum(client.get(i).phase == P.JOB_PHASE_RUNNING for i in ids) == 8,
                60,
                "all eight jobs to run",
                fleet,
            )
            on_east = [i for i in ids if client.get(i).dataplane == "east"]
            assert len(on_east) == 4, "reserved capacity fills first"

            fleet.kill_agent("east", signal.SIGKILL)
            time.sleep(1.0)
            fleet.start_agent("east")

            jobs = wait_until(
                lambda: (
                    (js := [client.get(i) for i in ids])
                    and all(j.phase in FINAL for j in js)
                    and js
                ),
                90,
                "every job to end",
                fleet,
            )
            east = next(d for d in client.list_dataplanes() if d.name == "east")
            assert east.connected

    assert [P.JobPhase.Name(j.phase) for j in jobs] == ["JOB_PHASE_SUCCEEDED"] * 8
    assert all(len(j.attempts) == 1 for j in jobs), "a re-adopted attempt is not re-placed"
    assert {j.id for j in jobs if j.dataplane == "east"} == set(on_east)
    lines = runs.read_text().split()
    ran = Counter(lines[0::2])
    assert ran == Counter({job_id: 1 for job_id in ids}), "every command ran exactly once"


def _dataplanes(client: FleetClient) -> list[object]:
    try:
        return list(client.list_dataplanes())
    except Exception:
        return []
