"""End to end: two control-plane replicas on one Postgres database, agents that know both.
The leader is killed -9 while jobs run and more are submitted; the other replica takes the
scheduler over, the leader's agents move to it, and every job ends once, each command having
run exactly once."""

from __future__ import annotations

import signal
import sys
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
LEADS = "this control plane now runs the scheduler"


def spec(i: int, runs: Path) -> types_pb2.JobSpec:
    return P.JobSpec(
        project="e2e", name=f"job-{i}",
        command=[sys.executable, "-c", RUN_RECORDER, str(runs), "2"],
        resources=P.Resources(gpus=1, gpu_model="H100"),
    )


def submitted(client: FleetClient, runs: Path, numbers: range) -> list[str]:
    ids = []
    for i in numbers:
        while True:
            try:
                ids.append(client.submit(spec(i, runs), f"key-{i}").job.id)
                break
            except FleetError:
                time.sleep(0.2)
    return ids


def test_the_other_replica_takes_over_when_the_leader_is_killed(
    tmp_path: Path, postgres_url: str
) -> None:
    runs = tmp_path / "runs.log"
    with LocalFleet(
        tmp_path / "fleet", database_url=postgres_url, heartbeat_interval_s=0.5,
        stale_after_s=5, lost_after_s=30,
    ) as fleet:
        fleet.start_control_plane()
        leader_log = fleet.root / "control-plane.log"
        wait_until(lambda: leader_log.exists() and LEADS in leader_log.read_text(), 60,
                   "the first control plane to lead", fleet)
        replica = fleet.add_replica()
        fleet.add_agent("east", pools("east", "us-east-1", "reserved"),
                        control_plane=fleet.addresses)
        # "west" holds its stream on the replica: its launches are relayed to it.
        fleet.add_agent("west", pools("west", "us-west-2", "on_demand"),
                        control_plane=f"{replica.address},{fleet.address}")
        with FleetClient(replica.address, timeout_s=5, tls=fleet.client_tls) as client:
            wait_until(lambda: _connected(client) == 2, 60, "both agents", fleet)
            ids = submitted(client, runs, range(8))
            wait_until(lambda: sum(client.get(i).phase == P.JOB_PHASE_RUNNING for i in ids) == 8,
                       60, "all eight running, on both dataplanes", fleet)
            assert {client.get(i).dataplane for i in ids} == {"east", "west"}

            fleet.kill_control_plane(signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: LEADS in replica.log_file.read_text(), 60,
                       "the replica to take the scheduler over", fleet, all_alive=False)
            handover_s = time.monotonic() - killed_at
            ids += submitted(client, runs, range(8, 12))
            jobs = wait_until(
                lambda: (js := [client.get(i) for i in ids])
                and all(j.phase in FINAL for j in js) and js,
                120, "every job to end", fleet, all_alive=False,
            )
            east = next(d for d in client.list_dataplanes() if d.name == "east")
        print(f"scheduler handover after kill -9: {handover_s:.1f}s")

    assert east.connected, "the leader's agent moved to the replica"
    assert [P.JobPhase.Name(j.phase) for j in jobs] == ["JOB_PHASE_SUCCEEDED"] * 12
    assert all(len(j.attempts) == 1 for j in jobs), "nothing was placed twice"
    ran = Counter(runs.read_text().split()[0::2])
    assert ran == Counter({job_id: 1 for job_id in ids}), "every command ran exactly once"


def _connected(client: FleetClient) -> int:
    try:
        return len([d for d in client.list_dataplanes() if d.connected and d.pools])
    except FleetError:
        return 0
