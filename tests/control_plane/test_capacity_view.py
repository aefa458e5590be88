"""The scheduler's view of free GPUs between passes (control_plane/scheduler.py, Wake).

A pass woken by new jobs alone keeps the free GPUs the last pass left. News that they may
have shrunk (a heartbeat changed pools) makes the next pass read them again; news that they
grew (an attempt ended) makes it read them again only if the kept ones leave a job waiting.
The schedule interval is long here, so nothing below is the interval's own re-read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fleet.v1 import types_pb2

from control_plane.registry.scheduling import SchedulingStore
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
LONG = {"schedule_interval_s": 30.0}


async def assert_still_waiting(jobs: Any, job_id: str) -> None:
    """The job is queued with no attempt, a moment after anything could have placed it."""
    await asyncio.sleep(0.2)
    assert (await wait_for_phase(jobs, job_id, P.JOB_PHASE_QUEUED)).attempts == []


@pytest.fixture
def capacity_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each scheduling pass that found jobs queued read the free GPUs, in order
    (and True for every reading of them on their own)."""
    reads: list[bool] = []
    pass_inputs, capacity_of = SchedulingStore.pass_inputs, SchedulingStore.capacity

    async def inputs_spy(self: SchedulingStore, limit: int, *, capacity: bool = True) -> Any:
        inputs = await pass_inputs(self, limit, capacity=capacity)
        if inputs.queued:   # (an empty queue ends the read before the capacity)
            reads.append(capacity)
        return inputs

    async def capacity_spy(self: SchedulingStore) -> Any:
        reads.append(True)
        return await capacity_of(self)

    monkeypatch.setattr(SchedulingStore, "pass_inputs", inputs_spy)
    monkeypatch.setattr(SchedulingStore, "capacity", capacity_spy)
    return reads


async def test_passes_woken_by_new_jobs_alone_keep_the_capacity_they_computed(
    database_url: str, capacity_reads: list[bool]
) -> None:
    async with control_plane(database_url, **LONG) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=3)])
        await agent.join()
        for _ in range(3):
            await submit(jobs, job_spec())
            await agent.expect("launch")
        # The first pass read the pool's 3 free GPUs; the next two took theirs from it.
        assert capacity_reads.count(True) == 1, capacity_reads
        # A fourth job finds the 3 GPUs taken without reading them again: it waits.
        fourth = await submit(jobs, job_spec())
        await assert_still_waiting(jobs, fourth.id)
        assert capacity_reads.count(True) == 1, capacity_reads
        await agent.close()


async def test_an_attempt_that_ends_frees_its_gpus_for_the_next_pass(
    database_url: str, capacity_reads: list[bool]
) -> None:
    async with control_plane(database_url, **LONG) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=1)])
        await agent.join()
        first = await submit(jobs, job_spec())
        launch = await agent.expect("launch")
        second = await submit(jobs, job_spec())
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await assert_still_waiting(jobs, second.id)   # a start is no news for the scheduler
        reads_before_end = capacity_reads.count(True)

        # No heartbeat: the update alone says the GPU is free again (its hold is gone).
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await wait_for_phase(jobs, first.id, P.JOB_PHASE_SUCCEEDED)
        assert (await agent.expect("launch")).job_id == second.id
        assert capacity_reads.count(True) > reads_before_end
        await agent.close()


async def test_a_heartbeat_with_more_free_gpus_is_seen_by_the_next_pass(
    database_url: str,
) -> None:
    async with control_plane(database_url, **LONG) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=2, free=0)])
        await agent.join()
        waiting = await submit(jobs, job_spec())
        await assert_still_waiting(jobs, waiting.id)

        agent.pools = [gpu_pool("h100", total=2, free=2)]   # another tenant let go of them
        await agent.heartbeat()
        assert (await agent.expect("launch")).job_id == waiting.id
        await agent.close()


async def test_an_ended_attempt_is_no_reason_to_read_while_the_kept_gpus_suffice(
    database_url: str, capacity_reads: list[bool]
) -> None:
    async with control_plane(database_url, **LONG) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=4)])
        await agent.join()
        first = await submit(jobs, job_spec())
        launch = await agent.expect("launch")
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await wait_for_phase(jobs, first.id, P.JOB_PHASE_SUCCEEDED)
        reads = capacity_reads.count(True)
        # 3 of the 4 GPUs are still free as the scheduler counts them: enough for this one.
        await submit(jobs, job_spec())
        await agent.expect("launch")
        assert capacity_reads.count(True) == reads, capacity_reads
        await agent.close()
