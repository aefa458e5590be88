"""Calls per second per API key: the token bucket exactly, then through the API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest
from fleet.v1 import jobs_pb2

from control_plane.domain.access import Role
from control_plane.domain.rate_limit import RateLimits
from control_plane.registry import Database, KeyStore
from tests.control_plane.harness import FakeAgent, P, gpu_pool
from tests.control_plane.test_access import enroll, refused, secured


async def key_in_database(url: str, name: str, role: Role = Role.VIEWER) -> str:
    """A key made in the database: the admin's own calls would spend its bucket."""
    database = Database(url)
    try:
        _, key = await KeyStore(database).create(
            name, role, ["vision"], "test", datetime.now(UTC))
    finally:
        await database.close()
    return key


def test_a_bucket_allows_a_burst_then_the_rate() -> None:
    limits = RateLimits(rate=2.0, burst=4.0)
    assert [limits.allow("a", 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert limits.allow("b", 0.0)                  # every key has its own bucket
    assert not limits.allow("a", 0.4)              # 0.8 of a call refilled: not yet
    assert limits.allow("a", 0.5)                  # one call after half a second at 2/s
    assert not limits.allow("a", 0.5)
    assert [limits.allow("a", 100.0) for _ in range(5)] == [True] * 4 + [False]   # capped


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0.5), (-1, 2)])
def test_nonsense_limits_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimits(rate, burst)


async def test_a_key_over_its_rate_is_told_to_slow_down(sqlite_url: str) -> None:
    """One call every two seconds, bursts of one: the arithmetic is above; here, that the
    API refuses with RESOURCE_EXHAUSTED per key, and serves again once the bucket refills."""
    async with secured(sqlite_url, rate_limit_per_s=0.5) as (_, caller, _admin):
        busy = caller(await key_in_database(sqlite_url, "busy-bot"))
        calm = caller(await key_in_database(sqlite_url, "calm-bot"))
        await busy.call(busy.jobs.List, jobs_pb2.ListJobsRequest())
        error = await refused(busy.call(busy.jobs.List, jobs_pb2.ListJobsRequest()))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "API key 'busy-bot'" in (error.details() or "")
        assert "more than 0.5 calls a second" in (error.details() or "")
        await calm.call(calm.jobs.List, jobs_pb2.ListJobsRequest())   # others are not slowed
        await asyncio.sleep(2.1)
        await busy.call(busy.jobs.List, jobs_pb2.ListJobsRequest())   # refilled


async def test_a_call_is_counted_once(sqlite_url: str) -> None:
    """Cancel authenticates once: with bursts of one call, a key's first cancel goes
    through (it looked up the job and then cancelled it under the same count)."""
    async with secured(sqlite_url, rate_limit_per_s=0.5) as (cp, caller, _admin):
        enroller = caller(await key_in_database(sqlite_url, "enroller", Role.ADMIN))
        submitter = caller(await key_in_database(sqlite_url, "submitter", Role.SUBMITTER))
        canceller = caller(await key_in_database(sqlite_url, "canceller", Role.SUBMITTER))
        token = await enroll(enroller, "onprem")
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")], token=token)
        await agent.connect()
        await agent.heartbeat()
        await asyncio.sleep(0.3)
        job = await submitter.submit("vision")
        cancelled = await canceller.call(canceller.jobs.Cancel, jobs_pb2.CancelJobRequest(
            job_id=job.id))
        assert cancelled.phase == P.JOB_PHASE_CANCELLED
        await agent.close()
