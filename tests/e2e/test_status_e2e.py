"""`fleet status` against a real fleet (control plane and agent as subprocesses, auth on),
with a viewer's key: the dataplane, its pool's GPUs, the running job's placement and the
job waiting behind it, as a table and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fleet.v1 import types_pb2

from fleet_cli.local_fleet import LocalFleet
from tests.fleet_waits import wait_until

pytestmark = pytest.mark.e2e
P = types_pb2

POOLS = {
    "dataplane": {"name": "eu-cluster", "region": "europe-west4", "cloud": "gcp"},
    "pools": [
        {
            "name": "a100",
            "purchase_type": "on_demand",
            "gpu_model": "A100",
            "gpu_memory_gb": 40,
            "gpu_count": 2,
            "price_per_gpu_hour": 3.0,
        }
    ],
}


def fleet_cmd(fleet: LocalFleet, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **fleet.client_env(), "FLEET_API_KEY": key, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fleet_cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_status_shows_the_dataplane_its_pool_and_the_placement(tmp_path: Path) -> None:
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5, auth=True) as fleet:
        fleet.start_control_plane()
        fleet.add_agent("eu-cluster", POOLS)
        with fleet.client() as admin:
            wait_until(
                lambda: any(d.connected and d.pools for d in admin.list_dataplanes()),
                60, "the agent to join", fleet,
            )  # fmt: skip
            viewer = admin.create_api_key("status-viewer", "viewer", ["nlp"]).secret
            spec = P.JobSpec(
                project="nlp", name="train",
                command=[sys.executable, "-c", "import time; time.sleep(120)"],
                resources=P.Resources(gpus=2, gpu_model="A100"),
            )  # fmt: skip
            running = admin.submit(spec).job.id
            wait_until(lambda: admin.get(running).phase == P.JOB_PHASE_RUNNING, 60,
                       "the first job to run", fleet)  # fmt: skip
            waiting = admin.submit(spec).job.id   # the pool's 2 GPUs are taken: it queues
            wait_until(lambda: admin.list_dataplanes()[0].pools[0].gpu_free == 0, 60,
                       "the agent to report its GPUs taken", fleet)  # fmt: skip
            assert admin.get(waiting).phase == P.JOB_PHASE_QUEUED

        table = fleet_cmd(fleet, viewer, "status", "--once")
        assert table.returncode == 0, table.stderr
        lines = [line.rstrip() for line in table.stdout.splitlines()]
        assert "europe-west4" in lines
        row = next(line for line in lines if line.startswith("  eu-cluster"))
        assert row.split() == ["eu-cluster", "healthy", "active", "a100", "on_demand",
                               "████████████", "2/2", "0"]  # fmt: skip
        assert "queue: 1 job waiting" in lines
        assert next(line for line in lines if line.startswith("nlp ")).split()[1] == "1"
        placement = next(line for line in lines if line.startswith(running))
        assert placement.split()[:4] == [running, "nlp", "train", "running"]
        assert "eu-cluster/a100" in placement
        assert not placement.endswith(" -")   # the reason, from the job's scheduled event

        snapshot = fleet_cmd(fleet, viewer, "status", "--json")
        assert snapshot.returncode == 0, snapshot.stderr
        document = json.loads(snapshot.stdout)
        (dataplane,) = document["dataplanes"]
        assert (dataplane["name"], dataplane["region"], dataplane["health"]) == (
            "eu-cluster", "europe-west4", "healthy")
        assert dataplane["pools"] == [{"name": "a100", "tier": "on_demand", "gpu_model": "A100",
                                       "gpu_total": 2, "gpu_used": 2, "gpu_free": 0}]
        (placement_json,) = document["placements"]
        assert placement_json["job_id"] == running
        assert (placement_json["dataplane"], placement_json["pool"]) == ("eu-cluster", "a100")
        assert placement_json["message"].startswith("placed on eu-cluster/a100: ")
        assert document["queue"]["total"] == 1
        assert [q["project"] for q in document["queue"]["projects"]] == ["nlp"]
