"""The control plane rides out a Postgres restart: while the database is down, calls fail
with UNAVAILABLE saying so and the process keeps serving; once it is back, the control plane
reconnects by itself, every acknowledged job is still there, and work flows again.

The test runs on a Postgres server of its own (the shared session server must not go
down under other tests), with durability on: the point is that acknowledged writes survive
a crash (`pg_ctl stop --mode=immediate`, no shutdown checkpoint), which with the fixture's
speed settings (synchronous_commit off) they need not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterator

import grpc
import psycopg
import pytest
from fleet.v1 import jobs_pb2, types_pb2

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
from tests.pg_server import DurablePostgres, PostgresServer, require_server_binaries

P = types_pb2
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
PROMPT_S = 5.0   # a refused call answers at once, it does not hang until a timeout


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = DurablePostgres.start(require_server_binaries())
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            for name, value in DURABLE.items():
                shown = conn.execute(f"SHOW {name}").fetchone()
                assert shown == (value,), f"{name} is {shown}, not {value}"
        yield server
    finally:
        server.stop()


def stop_postgres(server: PostgresServer) -> None:
    """A crash as far as the data is concerned: no shutdown checkpoint, clients cut off."""
    server.immediate_stop()


def start_postgres(server: PostgresServer) -> None:
    """The same data folder and port: the server recovers from its WAL."""
    server.restart()


def summary(job: types_pb2.Job) -> tuple[object, ...]:
    return (job.id, job.phase, job.epoch, job.dataplane,
            [(a.id, a.phase) for a in job.attempts])


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The call's error, which must come at once (not after some timeout)."""
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert time.monotonic() - started < PROMPT_S
    return caught.value


async def test_the_control_plane_rides_out_a_postgres_restart(
    own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres.url(own_postgres.create_database("restart"))
    async with control_plane(url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=2)])
        await agent.join()
        running = await submit(jobs, job_spec(gpus=1), key="running")
        launch = await agent.expect("launch")
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await wait_for_phase(jobs, running.id, P.JOB_PHASE_RUNNING)
        waiting = await submit(jobs, job_spec(gpus=2), key="waiting")  # 1 GPU is free
        scheduled = await submit(jobs, job_spec(gpus=1), key="scheduled")
        await agent.expect("launch")
        acknowledged = {}
        for job in (running, waiting, scheduled):
            acknowledged[job.id] = summary(await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id)))
        assert [a[1] for a in acknowledged.values()] == [
            P.JOB_PHASE_RUNNING, P.JOB_PHASE_QUEUED, P.JOB_PHASE_SCHEDULED
        ]

        stop_postgres(own_postgres)
        caplog.clear()

        # Clients get a retryable code and the reason, not UNKNOWN and a stack trace.
        for call in (jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec())),
                     jobs.Get(jobs_pb2.GetJobRequest(job_id=running.id))):
            error = await refused(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert "the database is unreachable" in (error.details() or ""), error
        # The agent's next report cannot be recorded: its stream ends, retryable.
        await agent.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        assert await asyncio.wait_for(agent.call.code(), PROMPT_S) == grpc.StatusCode.UNAVAILABLE
        assert "the database is unreachable" in await agent.call.details()
        # ... and it cannot join again until the database is back.
        again = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=2)])
        error = await refused(again.connect())
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        await again.close()
        # The scheduler says it cannot work, and keeps trying (it places again below).
        deadline = time.monotonic() + PROMPT_S
        while not [r for r in caplog.records if r.name == "control_plane.scheduler"]:
            assert time.monotonic() < deadline, "the scheduler logged nothing about the outage"
            await asyncio.sleep(0.05)
        assert not cp.scheduler_task.done()

        start_postgres(own_postgres)

        # No restart of the control plane: the very next calls work.
        for job_id, before in acknowledged.items():
            after = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job_id))
            assert summary(after) == before
        again = await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key="waiting"))
        assert not again.created and again.job.id == waiting.id
        await agent.close()

        # The agent reconnects with what it holds; the scheduler places again.
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=2)])
        await agent.connect()
        await agent.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        relaunch = await agent.expect("launch")  # the SCHEDULED one, which it never reported
        assert relaunch.job_id == scheduled.id
        await agent.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING),
                              status(relaunch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        done = await wait_for_phase(jobs, running.id, P.JOB_PHASE_SUCCEEDED)
        assert [a.phase for a in done.attempts] == [P.ATTEMPT_PHASE_SUCCEEDED]
        await agent.update(status(relaunch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await wait_for_phase(jobs, scheduled.id, P.JOB_PHASE_SUCCEEDED)

        # The two GPUs are free again: the waiting job is placed and runs.
        placed = await agent.expect("launch")
        assert placed.job_id == waiting.id
        new = await submit(jobs, job_spec(gpus=1))
        assert new.phase == P.JOB_PHASE_QUEUED
        await agent.update(status(placed.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await wait_for_phase(jobs, waiting.id, P.JOB_PHASE_SUCCEEDED)
        assert (await agent.expect("launch")).job_id == new.id
        await agent.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR
                and "scheduler" not in r.name], "only the scheduler may log errors"
