"""`fleet jobs ...` and `fleet dataplanes list` against the fake control plane."""

from __future__ import annotations

import json

import grpc
import pytest
from fleet.v1 import admin_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner, Result

from fleet_cli.main import app
from tests.cli.fakes import CREATED_AT, Failure, FakeFleet

Q, S, R = types_pb2.JOB_PHASE_QUEUED, types_pb2.JOB_PHASE_SCHEDULED, types_pb2.JOB_PHASE_RUNNING
OK, FAILED = types_pb2.JOB_PHASE_SUCCEEDED, types_pb2.JOB_PHASE_FAILED


def fleet(address: str, *args: str) -> Result:
    # Wide enough that rich tables never wrap a cell the tests look for.
    runner = CliRunner(env={"COLUMNS": "250", "FLEET_ADDRESS": None, "FLEET_TLS_CA": None})
    return runner.invoke(app, ["--address", address, "--insecure", *args])


def script(
    last_kind: str, last_phase: types_pb2.JobPhase.ValueType
) -> list[tuple[str, types_pb2.JobPhase.ValueType, str]]:
    return [
        ("submitted", Q, ""),
        ("scheduled", S, "eu-west"),
        ("started", R, "eu-west"),
        (last_kind, last_phase, "eu-west"),
    ]


# -- submit --------------------------------------------------------------------------------


def test_submit_sends_every_flag_in_the_request(fake_fleet: FakeFleet) -> None:
    result = fleet(
        fake_fleet.address,
        "jobs", "submit", "--project", "ml", "--domain", "staging", "--name", "train",
        "--gpus", "8", "--gpu-model", "H100", "--min-gpu-memory", "80", "--cpu", "4000",
        "--memory", "16Gi", "--label", "team=vision", "--label", "tier=gold",
        "--env", "EPOCHS=3", "--env", "EMPTY=", "--origin-region", "eu-west-1",
        "--no-spot", "--pin", "onprem", "--priority", "-5", "--timeout", "1h30m",
        "--retries", "0", "--image", "ghcr.io/acme/train:1", "--client-key", "k-1",
        "--service-account", "trainer",
        "--", "python", "train.py", "--epochs", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    request = fake_fleet.submits[0]
    spec = request.spec
    assert request.client_key == "k-1"
    assert (spec.project, spec.domain, spec.name) == ("ml", "staging", "train")
    assert list(spec.command) == ["python", "train.py", "--epochs", "3"]
    assert spec.image == "ghcr.io/acme/train:1"
    assert spec.service_account == "trainer"
    assert spec.resources == types_pb2.Resources(
        gpus=8, gpu_model="H100", min_gpu_memory_gb=80, cpu_millis=4000, memory_bytes=16 * 2**30
    )
    assert dict(spec.labels) == {"team": "vision", "tier": "gold"}
    assert dict(spec.env) == {"EPOCHS": "3", "EMPTY": ""}
    assert spec.routing.origin_region == "eu-west-1"
    assert spec.routing.HasField("allow_spot") and spec.routing.allow_spot is False
    assert spec.routing.pin_dataplane == "onprem"
    assert spec.priority == -5
    assert spec.timeout.ToTimedelta().total_seconds() == 5400
    assert spec.HasField("retry_budget") and spec.retry_budget == 0


def test_submit_leaves_unset_what_was_not_given(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "echo", "hi")
    assert result.exit_code == 0, result.output
    spec = fake_fleet.submits[0].spec
    assert spec.domain == "development"
    assert list(spec.command) == ["echo", "hi"]
    assert not spec.routing.HasField("allow_spot")  # the policy decides
    assert not spec.HasField("retry_budget")
    assert not spec.HasField("timeout")
    result = fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "--allow-spot", "x")
    assert fake_fleet.submits[1].spec.routing.allow_spot is True


def test_submit_prints_the_job_as_a_table(fake_fleet: FakeFleet) -> None:
    result = fleet(
        fake_fleet.address, "jobs", "submit", "--project", "ml", "--gpus", "2",
        "--gpu-model", "A100", "--", "python", "-c", "print('[bold]x')",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "job-1" in out
    assert "queued" in out and "JOB_PHASE" not in out
    assert "ml/development" in out
    assert "2x A100" in out
    assert "waiting for capacity" in out
    assert "2026-01-01T00:00:00Z" in out
    assert "[bold]x" in out  # printed as typed, not read as rich markup


def test_submit_prints_the_job_as_json(fake_fleet: FakeFleet) -> None:
    result = fleet(
        fake_fleet.address, "--output", "json", "jobs", "submit", "--project", "ml",
        "--gpus", "1", "--", "true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["id"] == "job-1"
    assert job["phase"] == "JOB_PHASE_QUEUED"
    assert job["spec"]["project"] == "ml"
    assert job["spec"]["resources"]["gpus"] == 1
    assert job["created_at"] == "2026-01-01T00:00:00Z"


def test_submit_wait_follows_the_job_and_exits_0_when_it_succeeds(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = script("succeeded", OK)
    result = fleet(
        fake_fleet.address, "-o", "json", "jobs", "submit", "--project", "ml", "--wait", "--",
        "true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert final["phase"] == "JOB_PHASE_SUCCEEDED"
    assert final["dataplane"] == "eu-west"
    for kind in ("submitted", "scheduled", "started", "succeeded"):
        assert kind in result.stderr
    assert "on eu-west" in result.stderr


def test_submit_wait_exits_1_when_the_job_fails(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = script("failed", FAILED)
    fake_fleet.break_watch_after = 2  # and survives a control plane restart on the way
    result = fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "--wait", "false")
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout
    assert [w.after_seq for w in fake_fleet.watches] == [0, 2]


def test_server_invalid_argument_exits_2_with_the_servers_message(fake_fleet: FakeFleet) -> None:
    message = "spec.resources.gpus: 9 GPUs exceed the largest pool (8)"
    fake_fleet.failures["Submit"] = Failure(grpc.StatusCode.INVALID_ARGUMENT, message)
    result = fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "--gpus", "9", "x")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"
    assert result.stdout == ""


def test_server_failed_precondition_exits_2(fake_fleet: FakeFleet) -> None:
    message = "job job-1 is already finished"
    fake_fleet.failures["Cancel"] = Failure(grpc.StatusCode.FAILED_PRECONDITION, message)
    result = fleet(fake_fleet.address, "jobs", "cancel", "job-1")
    assert result.exit_code == 2
    assert f"error: {message}" in result.stderr


def test_unreachable_control_plane_exits_3_naming_the_address(unreachable_address: str) -> None:
    result = fleet(unreachable_address, "jobs", "submit", "--project", "ml", "true")
    assert result.exit_code == 3
    assert f"cannot reach the control plane at {unreachable_address}" in result.stderr


def test_server_internal_error_exits_1(fake_fleet: FakeFleet) -> None:
    fake_fleet.failures["ListDataplanes"] = Failure(grpc.StatusCode.INTERNAL, "database down")
    result = fleet(fake_fleet.address, "dataplanes", "list")
    assert result.exit_code == 1
    assert "error: database down" in result.stderr


# -- get, list, cancel, watch, logs --------------------------------------------------------


def test_get_unknown_job_exits_1(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "jobs", "get", "nope")
    assert result.exit_code == 1
    assert "error: job nope not found" in result.stderr


def test_get_shows_attempts(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(
        types_pb2.Job(
            id="job-7",
            phase=R,
            spec=types_pb2.JobSpec(project="ml", command=["true"]),
            dataplane="us-east",
            pool="a100",
            retries_used=1,
            retry_budget=3,
            attempts=[
                types_pb2.Attempt(
                    id="job-7-a1", dataplane="eu-west", pool="h100",
                    phase=types_pb2.ATTEMPT_PHASE_PREEMPTED, reason="SpotReclaimed",
                    exit_code=137,
                ),
                types_pb2.Attempt(
                    id="job-7-a2", dataplane="us-east", pool="a100",
                    phase=types_pb2.ATTEMPT_PHASE_RUNNING, started_at=CREATED_AT,
                ),
            ],
        )
    )  # fmt: skip
    result = fleet(fake_fleet.address, "jobs", "get", "job-7")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "us-east/a100" in out
    assert "1 of 3 used" in out
    assert "preempted" in out and "SpotReclaimed" in out and "137" in out
    assert "job-7-a2" in out


def test_list_passes_filters_and_prints_a_json_array(fake_fleet: FakeFleet) -> None:
    for n in range(3):
        fake_fleet.add_job(
            types_pb2.Job(id=f"job-{n}", phase=R, spec=types_pb2.JobSpec(project="ml"))
        )
    fake_fleet.add_job(types_pb2.Job(id="job-q", phase=Q, spec=types_pb2.JobSpec(project="ml")))
    result = fleet(
        fake_fleet.address, "-o", "json", "jobs", "list", "--project", "ml",
        "--phase", "running", "--phase", "SCHEDULED", "--dataplane", "eu-west", "--limit", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    request = fake_fleet.list_requests[0]
    assert request.project == "ml"
    assert list(request.phases) == [R, S]
    assert request.dataplane == "eu-west"
    assert request.page_size == 2


def test_list_follows_pages_and_stops_at_the_limit(fake_fleet: FakeFleet) -> None:
    fake_fleet.max_page_size = 2
    for n in range(5):
        fake_fleet.add_job(
            types_pb2.Job(id=f"job-{n}", phase=R, spec=types_pb2.JobSpec(project="ml"))
        )
    fake_fleet.add_job(types_pb2.Job(id="job-q", phase=Q, spec=types_pb2.JobSpec(project="ml")))
    args = ("-o", "json", "jobs", "list", "--phase", "running")
    result = fleet(fake_fleet.address, *args, "--limit", "3")
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)
    assert [job["id"] for job in jobs] == ["job-0", "job-1", "job-2"]
    assert [r.page_token for r in fake_fleet.list_requests] == ["", "2"]
    result = fleet(fake_fleet.address, *args)
    assert [job["id"] for job in json.loads(result.stdout)] == [f"job-{n}" for n in range(5)]


def test_list_table(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(
        types_pb2.Job(
            id="job-1", phase=S, dataplane="eu-west", pool="h100",
            spec=types_pb2.JobSpec(
                project="ml", name="train", resources=types_pb2.Resources(gpus=4, gpu_model="H100")
            ),
        )
    )  # fmt: skip
    result = fleet(fake_fleet.address, "jobs", "list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "job-1" in line)
    for cell in ("ml", "train", "scheduled", "eu-west/h100", "4x H100"):
        assert cell in row


def test_list_unknown_phase_exits_2_before_any_call(fake_fleet: FakeFleet) -> None:
    result = fleet(fake_fleet.address, "jobs", "list", "--phase", "sleeping")
    assert result.exit_code == 2
    assert "--phase" in result.stderr and "'sleeping' is not a job phase" in result.stderr
    assert fake_fleet.list_requests == []


def test_cancel_sends_the_reason_and_prints_the_job(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(types_pb2.Job(id="job-1", phase=R))
    result = fleet(fake_fleet.address, "jobs", "cancel", "job-1", "--reason", "wrong data")
    assert result.exit_code == 0, result.output
    assert fake_fleet.cancels[0].reason == "wrong data"
    assert "cancelled" in result.stdout


def test_watch_prints_each_event(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = script("succeeded", OK)
    fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "true")
    result = fleet(fake_fleet.address, "jobs", "watch", "job-1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[1].split()[:3] == ["2026-01-01T00:00:02Z", "scheduled", "scheduled"]
    assert lines[3].split()[1:4] == ["succeeded", "succeeded", "job-1-a1"]


def test_watch_as_json_lines(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = script("failed", FAILED)
    fleet(fake_fleet.address, "jobs", "submit", "--project", "ml", "true")
    result = fleet(fake_fleet.address, "-o", "json", "jobs", "watch", "job-1")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["kind"] for e in events] == ["submitted", "scheduled", "started", "failed"]
    assert events[-1]["phase"] == "JOB_PHASE_FAILED"


def test_logs_writes_the_raw_bytes(fake_fleet: FakeFleet) -> None:
    fake_fleet.log_chunks = [
        types_pb2.LogChunk(data=b"step 1\n"),
        types_pb2.LogChunk(data=b"\xfe\xff binary\n"),
        types_pb2.LogChunk(eof=True),
    ]
    result = fleet(
        fake_fleet.address, "jobs", "logs", "job-1", "--attempt", "a-2", "--tail-bytes", "4096"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"step 1\n\xfe\xff binary\n"
    assert fake_fleet.log_requests[0].attempt_id == "a-2"
    assert fake_fleet.log_requests[0].tail_bytes == 4096


def test_logs_that_cannot_be_read_exit_1(fake_fleet: FakeFleet) -> None:
    fake_fleet.log_chunks = [types_pb2.LogChunk(eof=True, error="dataplane eu-west is offline")]
    result = fleet(fake_fleet.address, "jobs", "logs", "job-1")
    assert result.exit_code == 1
    assert "error: dataplane eu-west is offline" in result.stderr


# -- dataplanes ----------------------------------------------------------------------------


@pytest.fixture
def two_dataplanes(fake_fleet: FakeFleet) -> FakeFleet:
    heartbeat = Timestamp()
    heartbeat.GetCurrentTime()
    fake_fleet.dataplanes = [
        admin_pb2.Dataplane(
            name="eu-west", region="europe-west4", cloud="gcp",
            health=types_pb2.DATAPLANE_HEALTH_HEALTHY, connected=True,
            last_heartbeat_at=heartbeat, active_attempts=2,
            pools=[
                types_pb2.Pool(
                    name="h100", gpu_model="H100", gpu_memory_gb=80, gpu_total=8, gpu_free=6,
                    purchase_type=types_pb2.PURCHASE_TYPE_RESERVED, price_per_gpu_hour=2.1,
                ),
                types_pb2.Pool(
                    name="spot-a100", gpu_model="A100", gpu_memory_gb=40, gpu_total=16,
                    gpu_free=16, purchase_type=types_pb2.PURCHASE_TYPE_ON_DEMAND,
                    price_per_gpu_hour=1.25,
                ),
            ],
        ),
        admin_pb2.Dataplane(
            name="onprem", region="us-east", cloud="onprem",
            health=types_pb2.DATAPLANE_HEALTH_STALE, connected=False,
        ),
    ]  # fmt: skip
    return fake_fleet


def test_dataplanes_table(two_dataplanes: FakeFleet) -> None:
    result = fleet(two_dataplanes.address, "dataplanes", "list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "h100: 6/8 H100 80GB reserved $2.10" in out
    assert "spot-a100: 16/16 A100 40GB on_demand $1.25" in out
    eu_row = next(line for line in out.splitlines() if "eu-west" in line)
    for cell in ("europe-west4", "gcp", "healthy", "yes", "s ago"):
        assert cell in eu_row
    onprem_row = next(line for line in out.splitlines() if "onprem" in line)
    assert "stale" in onprem_row and " no " in onprem_row


def test_dataplanes_json(two_dataplanes: FakeFleet) -> None:
    result = fleet(two_dataplanes.address, "--output", "json", "dataplanes", "list")
    assert result.exit_code == 0, result.output
    dataplanes = json.loads(result.stdout)
    assert [d["name"] for d in dataplanes] == ["eu-west", "onprem"]
    assert dataplanes[0]["pools"][0]["gpu_free"] == 6
    assert dataplanes[0]["health"] == "DATAPLANE_HEALTH_HEALTHY"


def test_cordon_drain_and_uncordon(two_dataplanes: FakeFleet) -> None:
    address = two_dataplanes.address
    cordoned = fleet(address, "dataplanes", "cordon", "eu-west", "--reason", "kernel upgrade")
    assert cordoned.exit_code == 0, cordoned.output
    assert "cordoned: kernel upgrade" in cordoned.stdout

    drained = fleet(address, "dataplanes", "drain", "eu-west", "--deadline", "45m",
                    "--reason", "node pool upgrade")
    assert drained.exit_code == 0, drained.output
    row = next(line for line in drained.stdout.splitlines() if "eu-west" in line)
    assert "draining (44m" in row or "draining (45m" in row
    assert "node pool upgrade" in drained.stdout

    back = fleet(address, "-o", "json", "dataplanes", "uncordon", "eu-west")
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)["state"] == "DATAPLANE_STATE_ACTIVE"
    cordon, drain, uncordon = two_dataplanes.dataplane_changes
    assert isinstance(cordon, admin_pb2.CordonDataplaneRequest)
    assert isinstance(uncordon, admin_pb2.UncordonDataplaneRequest)
    assert isinstance(drain, admin_pb2.DrainDataplaneRequest)
    assert (drain.name, drain.reason, drain.deadline.seconds) == (
        "eu-west", "node pool upgrade", 45 * 60)


def test_drain_refuses_a_bad_deadline_and_an_unknown_dataplane(two_dataplanes: FakeFleet) -> None:
    bad = fleet(two_dataplanes.address, "dataplanes", "drain", "eu-west", "--deadline", "soon")
    assert bad.exit_code == 2
    assert "--deadline" in bad.stderr
    assert two_dataplanes.dataplane_changes == []
    unknown = fleet(two_dataplanes.address, "dataplanes", "cordon", "nope")
    assert unknown.exit_code == 1    # like any unknown name (see `fleet --help`)
    assert "no dataplane named 'nope'" in unknown.stderr
