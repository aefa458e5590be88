"""Two control planes on one Postgres database: one leads (runs the scheduler), either takes
submits and agent streams, and commands reach an agent whichever replica holds its stream.

Heartbeats here are 30 s apart, so anything an agent receives within seconds was relayed
between the replicas, not resent by a heartbeat's reconcile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from fleet.v1 import agent_pb2, jobs_pb2, types_pb2

from control_plane.server import RunningControlPlane
from tests.control_plane.harness import (
    FakeAgent,
    P,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    status,
    submit,
    wait_for_phase,
)

SLOW_HEARTBEATS = {"heartbeat_interval_s": 30.0, "stale_after_s": 60.0, "lost_after_s": 120.0}


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 10.0) -> float:
    """Wait until check() is truthy; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")


@asynccontextmanager
async def two_replicas(
    postgres_url: str,
) -> AsyncIterator[tuple[RunningControlPlane, RunningControlPlane]]:
    """(leader, follower), once one of them has taken the lead."""
    async with (
        control_plane(postgres_url, **SLOW_HEARTBEATS) as (first, _),
        control_plane(postgres_url, migrate=False, **SLOW_HEARTBEATS) as (second, _),
    ):
        await eventually(lambda: first.scheduler.leading or second.scheduler.leading, "a leader")
        assert not (first.scheduler.leading and second.scheduler.leading)
        yield (first, second) if first.scheduler.leading else (second, first)


async def test_sqlite_has_one_process_which_always_leads(sqlite_url: str) -> None:
    async with control_plane(sqlite_url) as (cp, _):
        await eventually(lambda: cp.scheduler.leading, "leading")


async def test_commands_reach_an_agent_connected_to_the_other_replica(postgres_url: str) -> None:
    async with two_replicas(postgres_url) as (leader, follower):
        agent = FakeAgent(follower.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        async with job_client(leader.port) as jobs:
            job = await submit(jobs, job_spec())
            launch = await agent.expect("launch", timeout=5.0)   # placed by the leader
            assert launch.job_id == job.id
            await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
            await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)

            async def answer() -> None:
                request = await agent.expect("log_request")
                await agent.outbox.put(agent_pb2.AgentMessage(log_chunk=types_pb2.LogChunk(
                    request_id=request.request_id, data=b"step 10 loss 0.5\n", eof=True)))

            answering = asyncio.create_task(answer())
            chunks = [c.data async for c in jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id))]
            await answering
            assert b"".join(chunks) == b"step 10 loss 0.5\n"

            await jobs.Cancel(jobs_pb2.CancelJobRequest(job_id=job.id, reason="wrong data"))
            cancel = await agent.expect("cancel", timeout=5.0)
            assert cancel.attempt_id == launch.attempt_id
        await agent.close()


async def test_killing_the_leader_hands_the_scheduler_over(postgres_url: str) -> None:
    async with two_replicas(postgres_url) as (leader, follower):
        agent = FakeAgent(follower.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        await leader.stop(grace_s=0.1)
        handover = await eventually(lambda: follower.scheduler.leading, "the follower leads")
        async with job_client(follower.port) as jobs:
            job = await submit(jobs, job_spec())
            launch = await agent.expect("launch", timeout=5.0)
            assert launch.job_id == job.id
        print(f"handover took {handover:.2f}s")
        await agent.close()


async def test_a_replica_that_holds_no_stream_says_where_the_log_is(postgres_url: str) -> None:
    async with two_replicas(postgres_url) as (leader, follower):
        agent = FakeAgent(follower.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        async with job_client(leader.port) as jobs:
            job = await submit(jobs, job_spec())
            await agent.expect("launch", timeout=5.0)
            await agent.close()
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id)):
                    pass
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "stays in its region" in (caught.value.details() or "")
