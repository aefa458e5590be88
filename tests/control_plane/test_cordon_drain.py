"""Cordon, drain and uncordon through the admin API, on SQLite and Postgres, with the
control plane's clock in the test's hands so that a drain's deadline passes exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2

from control_plane.clock import ManualClock
from control_plane.server import RunningControlPlane
from tests.control_plane.harness import (
    FakeAgent,
    P,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    policy_client,
    status,
    submit,
    wait_for_phase,
)


@asynccontextmanager
async def admin_client(port: int) -> AsyncIterator[admin_pb2_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


async def two_dataplanes(cp: RunningControlPlane) -> tuple[FakeAgent, FakeAgent]:
    """Two dataplanes of one 1-GPU pool each: "a" is cheaper, so it gets work first."""
    a = FakeAgent(cp.port, "a", [gpu_pool("h100", total=1, price=1.0)])
    b = FakeAgent(cp.port, "b", [gpu_pool("h100", total=1, price=5.0)])
    for agent in (a, b):
        await agent.join()
    await asyncio.sleep(0.1)
    return a, b


async def time_passes(cp: RunningControlPlane, clock: ManualClock, minutes: float,
                      *agents: FakeAgent) -> None:
    """The clock moves on while the agents keep heartbeating; then a scheduler pass."""
    clock.advance(minutes * 60)
    for agent in agents:
        await agent.heartbeat(*agent.held.values())
    await asyncio.sleep(0.2)
    await cp.scheduler.tick()


def drain_request(name: str, minutes: float, reason: str = "") -> admin_pb2.DrainDataplaneRequest:
    request = admin_pb2.DrainDataplaneRequest(name=name, reason=reason)
    request.deadline.FromTimedelta(timedelta(minutes=minutes))
    return request


async def test_a_cordoned_dataplane_gets_no_new_work_until_uncordoned(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, _),
        job_client(cp.port) as jobs,
        admin_client(cp.port) as admin,
        policy_client(cp.port) as policies,
    ):
        a, b = await two_dataplanes(cp)
        running = await submit(jobs, job_spec())
        on_a = await a.expect("launch")
        await a.update(status(on_a.attempt_id, P.ATTEMPT_PHASE_RUNNING))

        cordoned = await admin.CordonDataplane(
            admin_pb2.CordonDataplaneRequest(name="a", reason="kernel upgrade"))
        assert cordoned.state == admin_pb2.DATAPLANE_STATE_CORDONED
        assert cordoned.cordon_reason == "kernel upgrade"

        await a.update(status(on_a.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED))
        await wait_for_phase(jobs, running.id, P.JOB_PHASE_SUCCEEDED)   # ran to its end
        second = await submit(jobs, job_spec())
        on_b = await b.expect("launch")    # "a" is free and cheaper, but cordoned
        assert on_b.job_id == second.id
        third = await submit(jobs, job_spec())
        await asyncio.sleep(0.3)
        explained = await policies.ExplainJob(admin_pb2.ExplainJobRequest(job_id=third.id))
        reasons = {c.dataplane: c.reason for c in explained.candidates}
        assert reasons["a"] == "dataplane is cordoned: kernel upgrade"
        assert not [m for m in a.drain_inbox() if m.WhichOneof("body") == "launch"]

        uncordoned = await admin.UncordonDataplane(admin_pb2.UncordonDataplaneRequest(name="a"))
        assert uncordoned.state == admin_pb2.DATAPLANE_STATE_ACTIVE
        assert (await a.expect("launch")).job_id == third.id
        for agent in (a, b):
            await agent.close()


async def test_a_drain_moves_running_jobs_at_its_deadline_for_free(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, clock),
        job_client(cp.port) as jobs,
        admin_client(cp.port) as admin,
    ):
        a, b = await two_dataplanes(cp)
        job = await submit(jobs, job_spec(retry_budget=0))
        first = await a.expect("launch")
        await a.update(status(first.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)

        draining = await admin.DrainDataplane(drain_request("a", 30, "node pool upgrade"))
        assert draining.state == admin_pb2.DATAPLANE_STATE_DRAINING
        assert draining.drain_deadline.ToDatetime() == (
            clock.now() + timedelta(minutes=30)).replace(tzinfo=None)
        await time_passes(cp, clock, 29, a, b)
        assert not [m for m in a.drain_inbox() if m.WhichOneof("body") == "cancel"]

        await time_passes(cp, clock, 2, a, b)
        cancel = await a.expect("cancel")
        assert (cancel.attempt_id, cancel.reason) == (first.attempt_id, "drain deadline passed")
        # Until the agent says the attempt stopped, the job stays where it is: never twice.
        assert (await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))).phase == (
            P.JOB_PHASE_RUNNING)
        await a.update(status(first.attempt_id, P.ATTEMPT_PHASE_CANCELLED))

        second = await b.expect("launch")
        assert (second.job_id, second.epoch) == (job.id, 2)
        moved = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert moved.retries_used == 0      # a drain spends no retries (the budget is 0)
        preempted = moved.attempts[0]
        assert (preempted.phase, preempted.reason) == (P.ATTEMPT_PHASE_PREEMPTED, "Drained")
        assert preempted.message == "the dataplane's drain deadline passed: node pool upgrade"
        listed = {d.name: d for d in (await admin.ListDataplanes(
            admin_pb2.ListDataplanesRequest())).dataplanes}
        assert listed["a"].state == admin_pb2.DATAPLANE_STATE_DRAINED
        assert listed["a"].active_attempts == 0
        for agent in (a, b):
            await agent.close()


async def test_a_drain_with_no_deadline_preempts_at_once_and_survives_a_restart(
    database_url: str,
) -> None:
    async with control_plane(database_url) as (cp, _), admin_client(cp.port) as admin:
        a, b = await two_dataplanes(cp)
        async with job_client(cp.port) as jobs:
            job = await submit(jobs, job_spec())
            first = await a.expect("launch")
            await a.update(status(first.attempt_id, P.ATTEMPT_PHASE_RUNNING))
            await admin.DrainDataplane(drain_request("a", 0))
            assert (await a.expect("cancel")).attempt_id == first.attempt_id
        for agent in (a, b):
            await agent.close()
    async with (
        control_plane(database_url, migrate=False) as (cp, _),
        admin_client(cp.port) as admin,
        job_client(cp.port) as jobs,
    ):
        listed = await admin.ListDataplanes(admin_pb2.ListDataplanesRequest())
        states = {d.name: d.state for d in listed.dataplanes}
        assert states == {"a": admin_pb2.DATAPLANE_STATE_DRAINING,
                          "b": admin_pb2.DATAPLANE_STATE_ACTIVE}
        # No agent confirmed the stop yet: the job stays where it was, with one attempt.
        kept = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert (kept.phase, kept.dataplane, len(kept.attempts)) == (
            P.JOB_PHASE_RUNNING, "a", 1)


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        ("cordon-unknown", grpc.StatusCode.NOT_FOUND, "name: no dataplane named 'nope'"),
        ("drain-negative", grpc.StatusCode.INVALID_ARGUMENT, "deadline: -1 day, 23:59:00 is not"),
        ("bad-name", grpc.StatusCode.INVALID_ARGUMENT, "name: 'Bad_Name' is not a valid name"),
        ("long-reason", grpc.StatusCode.INVALID_ARGUMENT, "reason: longer than 1024 characters"),
    ],
)
async def test_bad_requests_name_the_field_and_change_nothing(
    sqlite_url: str, call: str, code: grpc.StatusCode, message: str
) -> None:
    async with control_plane(sqlite_url) as (cp, _), admin_client(cp.port) as admin:
        a, b = await two_dataplanes(cp)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            match call:
                case "cordon-unknown":
                    await admin.CordonDataplane(admin_pb2.CordonDataplaneRequest(name="nope"))
                case "drain-negative":
                    await admin.DrainDataplane(drain_request("a", -1))
                case "bad-name":
                    await admin.UncordonDataplane(
                        admin_pb2.UncordonDataplaneRequest(name="Bad_Name"))
                case "long-reason":
                    await admin.CordonDataplane(
                        admin_pb2.CordonDataplaneRequest(name="a", reason="x" * 1025))
        assert caught.value.code() == code
        assert (caught.value.details() or "").startswith(message)
        listed = await admin.ListDataplanes(admin_pb2.ListDataplanesRequest())
        assert {d.state for d in listed.dataplanes} == {admin_pb2.DATAPLANE_STATE_ACTIVE}
        for agent in (a, b):
            await agent.close()
