"""The `fleet` command against a real control plane and agent (subprocesses): what a user
types, what they read back, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fleet_cli.local_fleet import LocalFleet

pytestmark = pytest.mark.e2e

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


def fleet_cmd(
    fleet: LocalFleet, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet_cli", "--address", fleet.address, "--insecure", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5) as running:
        running.start_control_plane()
        running.add_agent("eu-cluster", POOLS)
        deadline = time.monotonic() + 60
        while True:
            listed = fleet_cmd(running, "-o", "json", "dataplanes", "list")
            if listed.returncode == 0 and json.loads(listed.stdout):
                break
            assert time.monotonic() < deadline, listed.stderr
            time.sleep(0.2)
        yield running


def test_submit_wait_logs_and_list(fleet: LocalFleet) -> None:
    done = fleet_cmd(
        fleet,
        "-o",
        "json",
        "jobs",
        "submit",
        "--project",
        "nlp",
        "--gpus",
        "2",
        "--gpu-model",
        "A100",
        "--wait",
        "--",
        sys.executable,
        "-c",
        "import os; print('hello from', os.environ['FLEET_DATAPLANE'])",
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["phase"] == "JOB_PHASE_SUCCEEDED" and job["dataplane"] == "eu-cluster"

    logs = fleet_cmd(fleet, "jobs", "logs", job["id"])
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "hello from eu-cluster\n"

    table = fleet_cmd(fleet, "jobs", "list", "--project", "nlp")
    assert table.returncode == 0 and job["id"] in table.stdout and "succeeded" in table.stdout

    dataplanes = json.loads(fleet_cmd(fleet, "-o", "json", "dataplanes", "list").stdout)
    assert [(d["name"], d["region"], d["connected"]) for d in dataplanes] == [
        ("eu-cluster", "europe-west4", True)
    ]


def test_a_failing_job_exits_1_and_bad_input_exits_2(fleet: LocalFleet) -> None:
    failed = fleet_cmd(
        fleet,
        "jobs",
        "submit",
        "--project",
        "nlp",
        "--retries",
        "0",
        "--wait",
        "--",
        sys.executable,
        "-c",
        "raise SystemExit(7)",
    )
    assert failed.returncode == 1, failed.stderr

    too_big = fleet_cmd(
        fleet,
        "jobs",
        "submit",
        "--project",
        "nlp",
        "--gpus",
        "4",
        "--gpu-model",
        "A100",
        "--",
        "true",
    )
    assert too_big.returncode == 2
    assert "resources.gpus: no pool has 4 GPUs of model A100 (largest: 2 in eu-cluster/a100)" in (
        too_big.stderr
    )

    unknown = fleet_cmd(fleet, "jobs", "get", "j-doesnotexist")
    assert unknown.returncode == 1 and "no job 'j-doesnotexist'" in unknown.stderr


def test_health_and_reflection_are_served(fleet: LocalFleet) -> None:
    with grpc.insecure_channel(fleet.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fleet.v1.JobService", "fleet.v1.AgentService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert {"fleet.v1.JobService", "fleet.v1.AgentService", "fleet.v1.AdminService"} <= names


def test_unreachable_control_plane_exits_3(tmp_path: Path) -> None:
    idle = LocalFleet(tmp_path)
    result = fleet_cmd(idle, "jobs", "list", timeout=60)
    assert result.returncode == 3, result.stderr
    assert idle.address in result.stderr


def test_agent_with_a_malformed_pool_file_stops_with_file_line_and_field(tmp_path: Path) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text(
        "dataplane:\n  name: dc1\n  region: r\n  cloud: onprem\n"
        "pools:\n  - name: h100\n    purchase_type: reserved\n    gpu_model: H100\n"
        "    gpu_memory_gb: 80\n    gpu_count: -2\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet_cli",
            "agent",
            "--control-plane",
            "127.0.0.1:1",
            "--pools",
            str(pools),
            "--join-token",
            "t",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{pools}:10:16: pools[0].gpu_count" in result.stderr


def test_policy_apply_explain_history_and_rollback(fleet: LocalFleet, tmp_path: Path) -> None:
    policy = tmp_path / "routing.yaml"
    policy.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: us-only\n"
        "    match: {projects: [ads]}\n"
        "    regions: [us-east-1]\n"
    )
    dry = fleet_cmd(fleet, "policy", "apply", "-f", str(policy), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "replayed" in dry.stdout

    applied = fleet_cmd(fleet, "policy", "apply", "-f", str(policy), "--comment", "ads in us")
    assert applied.returncode == 0, applied.stderr
    assert "applied policy version 1" in applied.stdout

    # The only dataplane is in europe-west4: the ads project can never run there.
    refused = fleet_cmd(fleet, "jobs", "submit", "--project", "ads", "--", "true")
    assert refused.returncode == 2
    assert "us-only" in refused.stderr

    explained = fleet_cmd(fleet, "policy", "explain", "--project", "ads", "--gpus", "1")
    assert explained.returncode == 0, explained.stderr
    assert "us-only" in explained.stdout and "eu-cluster" in explained.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    match: {projects: [a]}\n    regionz: []\n")
    rejected = fleet_cmd(fleet, "policy", "apply", "-f", str(bad))
    assert rejected.returncode == 2
    assert "policy.yaml:5:5: rules[0].regionz" in rejected.stderr

    rolled = fleet_cmd(fleet, "policy", "rollback", "1")
    assert rolled.returncode == 0 and "version 2" in rolled.stdout
    history = json.loads(fleet_cmd(fleet, "-o", "json", "policy", "history").stdout)
    assert [int(v["version"]) for v in history] == [2, 1]  # uint64: a JSON string
    shown = fleet_cmd(fleet, "policy", "show", "1")
    assert shown.stdout == policy.read_text()
