"""The whole path with a Kubernetes dataplane: a real control plane and `fleet agent`
(subprocesses) with a kubernetes pool file, driven through the `fleet` CLI, while the test
plays scheduler and kubelet on the API server (the fake, or FLEET_TEST_KUBECONFIG's)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dataplane_agent.domain.kube_pods import LABEL_JOB
from fleet_cli.local_fleet import LocalFleet
from tests.fleet_waits import wait_until
from tests.kube.cluster import Cluster

pytestmark = pytest.mark.e2e
T = TypeVar("T")
SPOT = {"eks.amazonaws.com/capacityType": "SPOT"}


def fleet_cmd(fleet: LocalFleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet_cli", "--address", fleet.address, "--insecure", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def fleet_json(fleet: LocalFleet, *args: str) -> Any:
    done = fleet_cmd(fleet, "-o", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def pools_of(fleet: LocalFleet) -> dict[str, tuple[int, int]]:
    """Every pool as (total, free) GPUs; empty while the control plane starts."""
    done = fleet_cmd(fleet, "-o", "json", "dataplanes", "list")
    if done.returncode == 3:
        return {}
    assert done.returncode == 0, done.stderr
    dataplanes = json.loads(done.stdout)
    return {
        pool["name"]: (pool.get("gpu_total", 0), pool.get("gpu_free", 0))
        for dataplane in dataplanes
        for pool in dataplane.get("pools", [])
    }


@pytest.fixture
def fleet(tmp_path: Path, cluster: Cluster) -> Iterator[LocalFleet]:
    cluster.add_gpu_node("fleet-test-a1", gpus=8)
    pool_file = {
        "dataplane": {"name": "gke-test", "region": "us-central1", "cloud": "gcp"},
        "kubernetes": {
            "namespace": cluster.namespace,
            "default_purchase_type": "on_demand",
            "prices": [{"gpu_model": "A100", "price_per_gpu_hour": 3.67}],
        },
    }
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.3) as running:
        running.start_control_plane()
        running.add_agent("gke-test", pool_file, ("--kubeconfig", str(cluster.kubeconfig)))
        wait_until(lambda: "a100-80gb-on-demand" in pools_of(running), 60, "pools", running)
        yield running


def wait_for(fleet: LocalFleet, check: Callable[[], T], what: str) -> T:
    return wait_until(check, 30, what, fleet)


def job_pods(cluster: Cluster, job_id: str) -> list[dict[str, Any]]:
    return cluster.pods(f"{LABEL_JOB}={job_id}")


def submit(fleet: LocalFleet, *options: str) -> str:
    job = fleet_json(
        fleet,
        "jobs",
        "submit",
        "--project",
        "vision",
        "--gpus",
        "2",
        "--gpu-model",
        "A100",
        "--image",
        "ghcr.io/acme/train:1",
        *options,
        "--",
        "python",
        "train.py",
    )
    return str(job["id"])


def phase(fleet: LocalFleet, job_id: str) -> str:
    return str(fleet_json(fleet, "jobs", "get", job_id)["phase"])


def test_a_job_runs_as_a_pod_and_its_log_comes_back(fleet: LocalFleet, cluster: Cluster) -> None:
    assert pools_of(fleet)["a100-80gb-on-demand"] == (8, 8)

    job_id = submit(fleet, "--service-account", "trainer")
    pods = wait_for(fleet, lambda: job_pods(cluster, job_id), "the job's pod")
    name = pods[0]["metadata"]["name"]
    assert pods[0]["spec"]["serviceAccountName"] == "trainer"
    container = pods[0]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/train:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"

    cluster.run(name, "fleet-test-a1")
    cluster.set_log(name, "epoch 1 loss 0.7\nepoch 2 loss 0.3\n")
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_RUNNING", "running")
    wait_for(fleet, lambda: pools_of(fleet)["a100-80gb-on-demand"] == (8, 6), "GPUs in use")

    # The log travels over the agent's outbound stream: nothing dials into the cluster.
    logs = fleet_cmd(fleet, "jobs", "logs", job_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "epoch 1 loss 0.7\nepoch 2 loss 0.3\n"

    cluster.finish(name, exit_code=0)
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_SUCCEEDED", "succeeded")
    job = fleet_json(fleet, "jobs", "get", job_id)
    assert job["dataplane"] == "gke-test"
    # Forgotten once recorded: the agent deletes the finished pod.
    wait_for(fleet, lambda: not job_pods(cluster, job_id), "the finished pod deleted")


def test_cancel_deletes_the_pod(fleet: LocalFleet, cluster: Cluster) -> None:
    job_id = submit(fleet)
    name = wait_for(fleet, lambda: job_pods(cluster, job_id), "pod")[0]["metadata"]["name"]
    cluster.run(name, "fleet-test-a1")
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_RUNNING", "running")

    cancelled = fleet_cmd(fleet, "jobs", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(
        fleet,
        lambda: (cluster.pod(name) or {}).get("metadata", {}).get("deletionTimestamp"),
        "graceful delete",
    )
    cluster.finish_deletion(name)  # the kubelet stopped the container
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_CANCELLED", "cancelled")


def test_a_spot_reclaim_moves_the_job_for_free(fleet: LocalFleet, cluster: Cluster) -> None:
    cluster.add_gpu_node("fleet-test-s1", gpus=8, labels=SPOT)
    wait_for(fleet, lambda: "a100-80gb-spot" in pools_of(fleet), "spot pool")
    cluster.cordon("fleet-test-a1")  # only spot capacity left
    wait_for(fleet, lambda: "a100-80gb-on-demand" not in pools_of(fleet), "on-demand gone")

    job_id = submit(fleet, "--allow-spot", "--retries", "0")
    first = wait_for(fleet, lambda: job_pods(cluster, job_id), "pod")[0]["metadata"]["name"]
    cluster.run(first, "fleet-test-s1")
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_RUNNING", "running")

    cluster.taint("fleet-test-s1", "cloud.google.com/impending-node-termination", "", "NoSchedule")
    cluster.uncordon("fleet-test-a1")
    # Preempted is a free retry (the budget is 0): the job runs again elsewhere.
    second = wait_for(
        fleet,
        lambda: [p for p in job_pods(cluster, job_id) if p["metadata"]["name"] != first],
        "second pod",
    )
    cluster.run(second[0]["metadata"]["name"], "fleet-test-a1")
    cluster.finish(second[0]["metadata"]["name"], exit_code=0)
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_SUCCEEDED", "succeeded")

    attempts = fleet_json(fleet, "jobs", "get", job_id)["attempts"]
    assert (attempts[0]["phase"], attempts[0]["reason"]) == (
        "ATTEMPT_PHASE_PREEMPTED",
        "SpotReclaimed",
    )
    assert attempts[-1]["phase"] == "ATTEMPT_PHASE_SUCCEEDED"
    # A placement that raced the agent's news of the lost pool is refused, also for free.
    assert all(
        (a["phase"], a["reason"]) == ("ATTEMPT_PHASE_PREEMPTED", "PoolUnavailable")
        for a in attempts[1:-1]
    )
    assert (cluster.pod(first) or {}).get("metadata", {}).get("deletionTimestamp") or (
        cluster.pod(first) is None
    )


def test_a_killed_agent_comes_back_and_launches_nothing_twice(
    fleet: LocalFleet, cluster: Cluster
) -> None:
    job_id = submit(fleet)
    name = wait_for(fleet, lambda: job_pods(cluster, job_id), "pod")[0]["metadata"]["name"]
    cluster.run(name, "fleet-test-a1")
    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_RUNNING", "running")

    fleet.kill_agent("gke-test")
    cluster.finish(name, exit_code=0)  # the pod ends while no agent watches
    time.sleep(0.5)
    fleet.start_agent("gke-test")

    wait_for(fleet, lambda: phase(fleet, job_id) == "JOB_PHASE_SUCCEEDED", "succeeded")
    attempts = fleet_json(fleet, "jobs", "get", job_id)["attempts"]
    assert len(attempts) == 1
