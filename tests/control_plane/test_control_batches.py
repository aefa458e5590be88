"""What a control plane sends down a real agent stream, on SQLite and Postgres: the launches
of one scheduling pass as ControlBatch messages to agents that accept them (plain messages
to older agents), no second Launch for a heartbeat that predates the first, and an
AttemptUpdate's changes applied in order in one group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, jobs_pb2, types_pb2

from control_plane.registry.reports import Report, apply_reports
from tests.control_plane.harness import (
    FakeAgent,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    status,
    submit,
    wait_for_phase,
)

P = types_pb2
JOBS = 20


class BatchingAgent(FakeAgent):
    """A fake agent whose Hello says it accepts ControlBatch, as the real agent's does."""

    async def _messages(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        async for message in super()._messages():
            if message.HasField("hello"):
                message.hello.accepts_batches = True
            yield message


async def messages_carrying(
    agent: FakeAgent, launches: int, timeout: float = 5.0
) -> list[agent_pb2.ControlMessage]:
    """The control messages the agent got until they carry this many launches."""
    received: list[agent_pb2.ControlMessage] = []

    def count() -> int:
        parts = [p for m in received for p in (m.batch.messages if m.HasField("batch") else [m])]
        return sum(p.HasField("launch") for p in parts)

    async def read() -> None:
        while count() < launches:
            received.append(await agent.inbox.get())

    await asyncio.wait_for(read(), timeout)
    return received


async def heard(agent: FakeAgent, free: int) -> None:
    """Wait until the control plane shows the pool with this many free GPUs (the heartbeat
    that said so has been applied)."""
    admin = admin_pb2_grpc.AdminServiceStub(agent.channel)
    for _ in range(250):
        listed = await admin.ListDataplanes(admin_pb2.ListDataplanesRequest())
        if any(p.gpu_free == free for d in listed.dataplanes for p in d.pools):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no heartbeat with {free} free GPUs was applied")


@pytest.mark.parametrize("accepts", [True, False], ids=["batching-agent", "old-agent"])
async def test_the_launches_of_one_pass_come_in_batches_only_to_agents_that_accept_them(
    database_url: str, accepts: bool
) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        kind = BatchingAgent if accepts else FakeAgent
        agent = kind(cp.port, "onprem", [gpu_pool("h100", total=64)])
        await agent.join()
        placed = await jobs.SubmitBatch(jobs_pb2.SubmitBatchRequest(
            jobs=[jobs_pb2.SubmitRequest(spec=job_spec(name=f"t-{i}")) for i in range(JOBS)]
        ))   # one transaction: one pass places them all

        received = await messages_carrying(agent, JOBS)
        kinds = [m.WhichOneof("body") for m in received]
        if accepts:
            assert set(kinds) == {"batch"}
            parts = [p for m in received for p in m.batch.messages]
        else:
            assert kinds == ["launch"] * JOBS
            parts = received
        launched = [p.launch.attempt_id for p in parts]
        assert [p.WhichOneof("body") for p in parts] == ["launch"] * JOBS
        assert sorted(launched) == sorted(f"{j.job.id}-1" for j in placed.jobs)
        await agent.close()


async def test_a_heartbeat_older_than_a_launch_does_not_bring_it_twice(
    database_url: str,
) -> None:
    interval_s = 1.0
    async with (
        control_plane(database_url, heartbeat_interval_s=interval_s) as (cp, _),
        job_client(cp.port) as jobs,
    ):
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=8)])
        await agent.join()
        job = await submit(jobs, job_spec())
        launch = await agent.expect("launch")
        launched_at = asyncio.get_running_loop().time()
        assert launch.attempt_id == f"{job.id}-1"

        # Built before the launch arrived: the attempt is not listed (it stays PENDING).
        agent.pools = [gpu_pool("h100", total=8, free=7)]
        await agent.heartbeat()
        await heard(agent, free=7)
        await asyncio.sleep(0.2)   # a second Launch would be sent right after that commit
        assert asyncio.get_running_loop().time() - launched_at < interval_s, "too slow to tell"
        assert [m.WhichOneof("body") for m in agent.drain_inbox()] == []

        # A heartbeat an interval later that still leaves it out: that launch went unheard.
        await asyncio.sleep(launched_at + interval_s + 0.05 - asyncio.get_running_loop().time())
        agent.pools = [gpu_pool("h100", total=8, free=6)]
        await agent.heartbeat()
        again = await agent.expect("launch", timeout=2.0)
        assert (again.attempt_id, again.epoch) == (launch.attempt_id, launch.epoch)
        await agent.close()


class Commits:
    """Every report transaction the control plane runs (what each one held), optionally
    made slower so that the agent's next messages queue up behind it."""

    def __init__(self) -> None:
        self.held: list[list[Report]] = []
        self.delay_s = 0.0

    async def apply(self, db: Any, reports: Sequence[Report]) -> Any:
        self.held.append(list(reports))
        await asyncio.sleep(self.delay_s)
        return await apply_reports(db, reports)


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Commits:
    recorder = Commits()
    # Read when the control plane builds its stores: every report transaction passes here.
    monkeypatch.setattr("control_plane.registry.dataplanes.apply_reports", recorder.apply)
    return recorder


async def events_of(jobs: Any, job_id: str) -> list[str]:
    return [e.kind async for e in jobs.Watch(jobs_pb2.WatchJobRequest(job_id=job_id))]


async def test_changes_of_one_attempt_in_one_update_apply_in_order_in_one_commit(
    database_url: str, commits: Commits
) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec())
        attempt_id = (await agent.expect("launch")).attempt_id
        update = agent_pb2.AttemptUpdate(
            status=status(attempt_id, P.ATTEMPT_PHASE_RUNNING),
            more=[status(attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0)],
        )
        await agent.outbox.put(agent_pb2.AgentMessage(attempt_update=update))

        done = await wait_for_phase(jobs, job.id, P.JOB_PHASE_SUCCEEDED)
        assert done.started_at.seconds and done.attempts[0].exit_code == 0
        assert await events_of(jobs, job.id) == ["submitted", "scheduled", "started", "succeeded"]
        # Both changes, in order, in one transaction (not one commit after the other).
        phases = [[a.phase.name for r in c if not r.full_state for a in r.reported]
                  for c in commits.held]
        assert ["RUNNING", "SUCCEEDED"] in phases, phases
        await agent.close()


async def test_an_update_is_applied_before_the_heartbeat_sent_after_it(
    sqlite_url: str, commits: Commits
) -> None:
    async with control_plane(sqlite_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec())
        attempt_id = (await agent.expect("launch")).attempt_id
        commits.delay_s = 0.2   # the next two messages arrive while this heartbeat commits
        await agent.heartbeat(status(attempt_id, P.ATTEMPT_PHASE_STARTING))
        await asyncio.sleep(0.05)
        await agent.update(status(attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await agent.heartbeat(status(attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))

        await wait_for_phase(jobs, job.id, P.JOB_PHASE_SUCCEEDED)
        assert await events_of(jobs, job.id) == ["submitted", "scheduled", "started", "succeeded"]
        await agent.close()
