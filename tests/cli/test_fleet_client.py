"""FleetClient against the fake control plane: error translation, paging, watch and wait."""

from __future__ import annotations

import threading

import grpc
import pytest
from fleet.v1 import admin_pb2, types_pb2

import fleet_client
from fleet_client import PLAINTEXT, FleetClient
from tests.cli.fakes import Failure, FakeFleet


def plaintext_client(address: str) -> FleetClient:
    """The fake control plane speaks plaintext."""
    return FleetClient(address, tls=PLAINTEXT)


Q, S, R = types_pb2.JOB_PHASE_QUEUED, types_pb2.JOB_PHASE_SCHEDULED, types_pb2.JOB_PHASE_RUNNING
OK, FAILED = types_pb2.JOB_PHASE_SUCCEEDED, types_pb2.JOB_PHASE_FAILED
SUCCESS_SCRIPT = [
    ("submitted", Q, ""),
    ("scheduled", S, "eu-west"),
    ("started", R, "eu-west"),
    ("succeeded", OK, "eu-west"),
]

ERROR_CLASSES = [
    (grpc.StatusCode.INVALID_ARGUMENT, fleet_client.InvalidArgument),
    (grpc.StatusCode.FAILED_PRECONDITION, fleet_client.FailedPrecondition),
    (grpc.StatusCode.NOT_FOUND, fleet_client.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, fleet_client.AlreadyExists),
    (grpc.StatusCode.UNAUTHENTICATED, fleet_client.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, fleet_client.PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, fleet_client.ResourceExhausted),
    (grpc.StatusCode.UNAVAILABLE, fleet_client.Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, fleet_client.DeadlineExceeded),
    (grpc.StatusCode.INTERNAL, fleet_client.Internal),
    (grpc.StatusCode.UNKNOWN, fleet_client.Internal),
    (grpc.StatusCode.UNIMPLEMENTED, fleet_client.Internal),
    (grpc.StatusCode.ABORTED, fleet_client.Internal),
    (grpc.StatusCode.DATA_LOSS, fleet_client.Internal),
]


def spec() -> types_pb2.JobSpec:
    return types_pb2.JobSpec(project="ml", domain="development", command=["python", "t.py"])


@pytest.mark.parametrize(("code", "error_class"), ERROR_CLASSES)
def test_unary_status_becomes_its_error_class_with_the_servers_message(
    fake_fleet: FakeFleet, code: grpc.StatusCode, error_class: type[fleet_client.FleetError]
) -> None:
    message = f"spec.resources.gpus: {code.name.lower()} [detail]"
    fake_fleet.failures["Get"] = Failure(code, message)
    with plaintext_client(fake_fleet.address) as client, pytest.raises(error_class) as raised:
        client.get("job-1")
    assert type(raised.value) is error_class
    assert raised.value.message == message
    assert str(raised.value) == message
    assert raised.value.code == code
    assert isinstance(raised.value, fleet_client.FleetError)


@pytest.mark.parametrize(("code", "error_class"), ERROR_CLASSES)
def test_stream_status_becomes_its_error_class(
    fake_fleet: FakeFleet, code: grpc.StatusCode, error_class: type[fleet_client.FleetError]
) -> None:
    fake_fleet.failures["Logs"] = Failure(code, "log relay failed")
    with plaintext_client(fake_fleet.address) as client, pytest.raises(error_class) as raised:
        list(client.logs("job-1"))
    assert type(raised.value) is error_class
    assert raised.value.message == "log relay failed"


def test_unreachable_control_plane_is_unavailable(unreachable_address: str) -> None:
    with plaintext_client(unreachable_address) as client, pytest.raises(fleet_client.Unavailable):
        client.list_dataplanes()


def test_no_answer_within_the_timeout_is_deadline_exceeded(fake_fleet: FakeFleet) -> None:
    fake_fleet.hold_watch = threading.Event()
    fake_fleet.add_job(types_pb2.Job(id="job-1", phase=Q))
    # A stream has no deadline of its own; wait() gives it the caller's.
    with (
        plaintext_client(fake_fleet.address) as client,
        pytest.raises(
            fleet_client.DeadlineExceeded, match=r"job job-1 did not finish within 0\.3s"
        ),
    ):
        client.wait("job-1", timeout_s=0.3)


def test_error_from_status_defaults_to_internal() -> None:
    error = fleet_client.error_from_status(grpc.StatusCode.OUT_OF_RANGE, "page token")
    assert type(error) is fleet_client.Internal
    assert error.code == grpc.StatusCode.OUT_OF_RANGE


def test_submit_sends_the_spec_and_client_key(fake_fleet: FakeFleet) -> None:
    with plaintext_client(fake_fleet.address) as client:
        response = client.submit(spec(), client_key="exec-1/n0/0")
    assert response.created
    assert response.job.id == "job-1"
    assert fake_fleet.submits[0].client_key == "exec-1/n0/0"
    assert fake_fleet.submits[0].spec == spec()


def test_iter_jobs_follows_page_tokens(fake_fleet: FakeFleet) -> None:
    for n in range(5):
        fake_fleet.add_job(types_pb2.Job(id=f"job-{n}", phase=R, spec=spec()))
    with plaintext_client(fake_fleet.address) as client:
        jobs = list(client.iter_jobs(project="ml", phases=[R], page_size=2))
    assert [job.id for job in jobs] == [f"job-{n}" for n in range(5)]
    assert [r.page_token for r in fake_fleet.list_requests] == ["", "2", "4"]
    assert all(list(r.phases) == [R] and r.project == "ml" for r in fake_fleet.list_requests)


def test_logs_yields_the_raw_bytes(fake_fleet: FakeFleet) -> None:
    fake_fleet.log_chunks = [
        types_pb2.LogChunk(data=b"epoch 1\n"),
        types_pb2.LogChunk(data=b"\xff\x00raw\n"),
        types_pb2.LogChunk(eof=True),
    ]
    with plaintext_client(fake_fleet.address) as client:
        data = b"".join(client.logs("job-1", attempt_id="a-1", tail_bytes=10))
    assert data == b"epoch 1\n\xff\x00raw\n"
    assert fake_fleet.log_requests[0].attempt_id == "a-1"
    assert fake_fleet.log_requests[0].tail_bytes == 10


def test_a_log_chunk_with_an_error_raises_it(fake_fleet: FakeFleet) -> None:
    fake_fleet.log_chunks = [
        types_pb2.LogChunk(data=b"partial\n"),
        types_pb2.LogChunk(eof=True, error="pod fleet-a-1 is gone"),
    ]
    with plaintext_client(fake_fleet.address) as client:
        chunks = client.logs("job-1")
        assert next(chunks) == b"partial\n"
        with pytest.raises(fleet_client.Internal, match="pod fleet-a-1 is gone"):
            next(chunks)


def test_wait_follows_events_to_the_final_phase(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = SUCCESS_SCRIPT
    seen: list[str] = []
    with plaintext_client(fake_fleet.address) as client:
        job = client.submit(spec()).job
        final = client.wait(job.id, on_event=lambda event: seen.append(event.kind))
    assert final.phase == OK
    assert final.dataplane == "eu-west"
    assert seen == ["submitted", "scheduled", "started", "succeeded"]


def test_wait_reopens_a_broken_watch_after_the_last_event(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = SUCCESS_SCRIPT
    fake_fleet.break_watch_after = 2
    seen: list[int] = []
    with plaintext_client(fake_fleet.address) as client:
        job = client.submit(spec()).job
        final = client.wait(job.id, on_event=lambda event: seen.append(event.seq))
    assert final.phase == OK
    assert seen == [1, 2, 3, 4]
    assert [w.after_seq for w in fake_fleet.watches] == [0, 2]


def test_wait_reopens_a_watch_that_ended_before_the_final_event(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = [*SUCCESS_SCRIPT[:3], ("failed", FAILED, "eu-west")]
    fake_fleet.end_watch_after = 3
    with plaintext_client(fake_fleet.address) as client:
        job = client.submit(spec()).job
        final = client.wait(job.id)
    assert final.phase == FAILED
    assert [w.after_seq for w in fake_fleet.watches] == [0, 3]


def test_wait_on_an_unknown_job_is_not_found(fake_fleet: FakeFleet) -> None:
    with plaintext_client(fake_fleet.address) as client, pytest.raises(fleet_client.NotFound):
        client.wait("nope")


def test_cancel_sends_the_reason(fake_fleet: FakeFleet) -> None:
    fake_fleet.add_job(types_pb2.Job(id="job-1", phase=R))
    with plaintext_client(fake_fleet.address) as client:
        job = client.cancel("job-1", reason="wrong data")
    assert job.phase == types_pb2.JOB_PHASE_CANCELLED
    assert fake_fleet.cancels[0].reason == "wrong data"


# -- PolicyService -------------------------------------------------------------------------


def test_policy_calls_send_their_arguments_and_return_the_servers_answer(
    fake_fleet: FakeFleet,
) -> None:
    fake_fleet.add_job(types_pb2.Job(id="job-1"))
    fake_fleet.explanation = admin_pb2.Explanation(rule="default", policy_version=2)
    with plaintext_client(fake_fleet.address) as client:
        applied = client.apply_policy("rules: []\n", author="a@h", comment="first").applied
        dry = client.apply_policy("rules: [x]\n", dry_run=True, replay_jobs=10)
        current = client.get_policy()
        history = client.list_policy_versions()
        rolled = client.rollback_policy(1, author="b@h")
        explained_job = client.explain_job("job-1")
        explained_spec = client.explain_placement(spec())
    sent = [(r.document, r.author, r.comment, r.dry_run, r.replay_jobs) for r in fake_fleet.applies]
    assert sent == [("rules: []\n", "a@h", "first", False, 0), ("rules: [x]\n", "", "", True, 10)]
    assert applied.version == 1 and not dry.HasField("applied")
    assert current.document == "rules: []\n"
    assert history.current == 1 and [v.version for v in history.versions] == [1]
    assert (fake_fleet.rollbacks[0].version, fake_fleet.rollbacks[0].author) == (1, "b@h")
    assert rolled.version == 2 and rolled.document == "rules: []\n"
    assert explained_job.job_id == "job-1" and explained_job.rule == "default"
    assert fake_fleet.explain_placements[0].spec == spec()
    assert explained_spec.policy_version == 2


def test_an_invalid_policy_keeps_every_line_of_the_servers_message(fake_fleet: FakeFleet) -> None:
    problems = "policy.yaml:3:5: rules[0].match: unknown key 'projct'\npolicy.yaml:9:1: tiers: ..."
    fake_fleet.failures["ApplyPolicy"] = Failure(grpc.StatusCode.INVALID_ARGUMENT, problems)
    with (
        plaintext_client(fake_fleet.address) as client,
        pytest.raises(fleet_client.InvalidArgument) as raised,
    ):
        client.apply_policy("rules: [\n")
    assert raised.value.message == problems
