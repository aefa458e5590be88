"""Writes that arrive together: SubmitBatch, concurrent submits and concurrent agent reports
sharing transactions (group commit), on SQLite and Postgres, over a real gRPC channel."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
import psycopg
import pytest
from fleet.v1 import agent_pb2, jobs_pb2, types_pb2

from control_plane.domain.phases import AttemptPhase
from control_plane.domain.reconcile import ReportedAttempt
from control_plane.registry import DataplaneStore
from control_plane.registry.group_commit import GroupCommit
from tests.control_plane.harness import (
    FakeAgent,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    status,
    wait_for_phase,
)

P = types_pb2


def _batch(*specs: types_pb2.JobSpec, keys: Sequence[str] = ()) -> jobs_pb2.SubmitBatchRequest:
    keys = list(keys) or [""] * len(specs)
    return jobs_pb2.SubmitBatchRequest(
        jobs=[
            jobs_pb2.SubmitRequest(spec=spec, client_key=key)
            for spec, key in zip(specs, keys, strict=True)
        ]
    )


async def test_a_batch_is_stored_in_order_and_every_job_runs(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=8, free=8)])
        await agent.join()
        specs = [job_spec(gpus=1, name=f"train-{i}") for i in range(5)]
        answer = await jobs.SubmitBatch(_batch(*specs))
        assert [j.job.spec.name for j in answer.jobs] == [f"train-{i}" for i in range(5)]
        assert all(j.created for j in answer.jobs)
        assert all(j.job.phase == P.JOB_PHASE_QUEUED for j in answer.jobs)
        launched = {(await agent.expect("launch")).job_id for _ in range(5)}
        assert launched == {j.job.id for j in answer.jobs}
        for job_id in launched:
            await agent.update(status(f"{job_id}-1", P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        for job_id in launched:
            await wait_for_phase(jobs, job_id, P.JOB_PHASE_SUCCEEDED)
        await agent.close()


async def test_client_keys_in_a_batch_are_idempotent(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        single = await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key="k-1"))
        answer = await jobs.SubmitBatch(
            _batch(job_spec(), job_spec(), job_spec(), keys=["k-1", "k-2", "k-2"])
        )
        created = [j.created for j in answer.jobs]
        ids = [j.job.id for j in answer.jobs]
        assert created == [False, True, False]
        assert ids[0] == single.job.id and ids[1] == ids[2] != ids[0]
        again = await jobs.SubmitBatch(_batch(job_spec(), keys=["k-2"]))
        assert not again.jobs[0].created and again.jobs[0].job.id == ids[1]
        listed = await jobs.List(jobs_pb2.ListJobsRequest(project="vision"))
        assert len(listed.jobs) == 2
        await agent.close()


async def test_one_bad_job_refuses_the_whole_batch_and_names_it(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=8, free=8)])
        await agent.join()
        bad = job_spec()
        bad.project = "Not A Project!"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.SubmitBatch(_batch(job_spec(), bad, job_spec()))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid job: jobs[1].spec.project: " in (refused.value.details() or "")

        too_big = job_spec(gpus=64)
        with pytest.raises(grpc.aio.AioRpcError) as never:
            await jobs.SubmitBatch(_batch(job_spec(), too_big))
        assert never.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "jobs[1]: no dataplane can ever run this job" in (never.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await jobs.SubmitBatch(jobs_pb2.SubmitBatchRequest())
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (empty.value.details() or "").startswith("jobs: 0 jobs; a batch has 1 to 1000")

        listed = await jobs.List(jobs_pb2.ListJobsRequest(project="vision"))
        assert list(listed.jobs) == []   # nothing of a refused batch was stored
        await agent.close()


async def test_concurrent_submits_and_reports_are_all_applied(database_url: str) -> None:
    """Many agents report and many callers submit at once: the batches they share must
    give each caller its own answer and lose nothing."""
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agents = [FakeAgent(cp.port, f"dp-{i}", [gpu_pool("h100", total=2, free=2)])
                  for i in range(6)]
        await asyncio.gather(*(agent.join() for agent in agents))
        answers = await asyncio.gather(
            *(jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(gpus=1), client_key=f"c-{i}"))
              for i in range(12))
        )
        assert len({a.job.id for a in answers}) == 12 and all(a.created for a in answers)
        by_agent = await asyncio.gather(
            *(asyncio.gather(agent.expect("launch"), agent.expect("launch")) for agent in agents)
        )
        # Every agent reports both of its attempts at once, in one heartbeat each.
        await asyncio.gather(*(
            agent.heartbeat(*(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0)
                              for launch in launches))
            for agent, launches in zip(agents, by_agent, strict=True)
        ))
        for answer in answers:
            done = await wait_for_phase(jobs, answer.job.id, P.JOB_PHASE_SUCCEEDED)
            assert len(done.attempts) == 1
        for agent in agents:
            await agent.close()


async def test_group_commit_answers_each_caller_in_order() -> None:
    batches: list[list[int]] = []

    async def apply(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    writes: GroupCommit[int, int] = GroupCommit(apply, max_batch=4)
    results = await asyncio.gather(*(writes.write(i) for i in range(10)), return_exceptions=True)
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        0, "odd 1", 20, "odd 3", 40, "odd 5", 60, "odd 7", 80, "odd 9"
    ]
    assert [i for batch in batches for i in batch] == list(range(10))   # arrival order
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]   # at most max_batch each
    await writes.close()


async def test_a_failed_transaction_fails_its_whole_batch_and_the_next_one_works() -> None:
    calls = 0

    async def apply(items: Sequence[str]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("the database went away")
        return [item.upper() for item in items]

    writes: GroupCommit[str, str] = GroupCommit(apply)
    with pytest.raises(ConnectionError):
        await writes.write("a")
    assert await writes.write("b") == "B"
    await writes.close()


async def test_a_lone_write_waits_its_linger_for_company_and_a_busy_queue_does_not() -> None:
    batches: list[list[str]] = []

    async def apply(items: Sequence[str]) -> list[str | BaseException]:
        batches.append(list(items))
        return list(items)

    writes: GroupCommit[str, str] = GroupCommit(apply, linger_s=0.2)
    first = writes.write("a")
    await asyncio.sleep(0.05)   # within a's linger
    second = writes.write("b")
    assert await asyncio.gather(first, second) == ["a", "b"]
    assert batches == [["a", "b"]]   # one transaction, not two

    batches.clear()
    # Two queued at once: the first has company, nothing waits.
    started = asyncio.get_running_loop().time()
    assert await asyncio.gather(writes.write("c"), writes.write("d")) == ["c", "d"]
    assert batches == [["c", "d"]]
    assert asyncio.get_running_loop().time() - started < 0.2
    await writes.close()


async def test_closing_applies_the_queued_writes_and_a_lingering_one_at_once() -> None:
    batches: list[list[str]] = []

    async def apply(items: Sequence[str]) -> list[str | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.05)
        return [item.upper() for item in items]

    writes: GroupCommit[str, str] = GroupCommit(apply, max_batch=2, linger_s=10.0)
    lingering = writes.write("a")
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    await writes.close()   # a shutdown: "a" is received, and is not dropped
    assert await lingering == "A"
    assert asyncio.get_running_loop().time() - started < 1.0   # no 10 s linger

    first, second, third = writes.write("b"), writes.write("c"), writes.write("d")
    await asyncio.sleep(0.01)   # the writer holds [b, c]; d waits in the queue
    await writes.close()
    assert await asyncio.gather(first, second, third) == ["B", "C", "D"]
    assert batches == [["a"], ["b", "c"], ["d"]]


async def test_closing_gives_up_on_a_database_that_does_not_answer() -> None:
    async def apply(items: Sequence[str]) -> list[str | BaseException]:
        await asyncio.sleep(60)   # the database went away mid-transaction
        return list(items)

    writes: GroupCommit[str, str] = GroupCommit(apply)
    stuck = writes.write("a")
    await asyncio.sleep(0.01)
    await asyncio.wait_for(writes.close(timeout_s=0.1), 2.0)
    with pytest.raises(asyncio.CancelledError):
        await stuck


async def test_an_update_carrying_several_changes_applies_them_in_order(
    database_url: str,
) -> None:
    """An agent that fell behind sends its waiting changes in one AttemptUpdate; the job
    history is as if they came one by one (started, then succeeded)."""
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=8, free=8)])
        await agent.join()
        first, second = (await jobs.SubmitBatch(_batch(job_spec(), job_spec()))).jobs
        for _ in range(2):
            await agent.expect("launch")
        a, b = f"{first.job.id}-1", f"{second.job.id}-1"
        update = agent_pb2.AttemptUpdate(
            status=status(a, P.ATTEMPT_PHASE_RUNNING),
            more=[status(b, P.ATTEMPT_PHASE_RUNNING),
                  status(a, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0),
                  status(b, P.ATTEMPT_PHASE_FAILED, exit_code=3)],
        )
        await agent.outbox.put(agent_pb2.AgentMessage(attempt_update=update))
        done = await wait_for_phase(jobs, first.job.id, P.JOB_PHASE_SUCCEEDED)
        assert done.started_at.seconds and done.attempts[0].exit_code == 0
        events = [e.kind async for e in jobs.Watch(jobs_pb2.WatchJobRequest(job_id=done.id))]
        assert events == ["submitted", "scheduled", "started", "succeeded"]
        failed = await jobs.Get(jobs_pb2.GetJobRequest(job_id=second.job.id))
        assert failed.attempts[0].phase == P.ATTEMPT_PHASE_FAILED
        assert failed.attempts[0].exit_code == 3
        await agent.close()


async def test_an_update_with_too_many_changes_is_refused_by_name(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _):
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        update = agent_pb2.AttemptUpdate(
            status=status("j-x-1", P.ATTEMPT_PHASE_RUNNING),
            more=[status(f"j-x{i}-1", P.ATTEMPT_PHASE_RUNNING) for i in range(1000)],
        )
        await agent.outbox.put(agent_pb2.AgentMessage(attempt_update=update))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                if await agent.call.read() is grpc.aio.EOF:
                    break
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "attempt_update.more: 1000 entries, at most 999" in (ended.value.details() or "")


async def test_a_heartbeat_does_not_wait_for_locks_on_jobs_it_does_not_change(
    postgres_url: str,
) -> None:
    """A heartbeat listing a running attempt unchanged locks nothing of its job: a slow
    transaction holding that job (a cancel, say) does not stall the agent's reports.
    (Postgres only: SQLite has one writer at a time and no row locks.)"""
    database_url = postgres_url
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec()))).job
        launch = await agent.expect("launch")
        running = status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING)
        await agent.update(running)
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)
        store = DataplaneStore(cp.database)
        listed = ReportedAttempt(launch.attempt_id, launch.epoch, AttemptPhase.RUNNING)
        conninfo = database_url.replace("postgresql+psycopg://", "postgresql://")
        async with await psycopg.AsyncConnection.connect(conninfo) as other:
            await other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
            outcome = await asyncio.wait_for(
                store.apply_report("onprem", None, [listed], full_state=True,
                                   now=datetime.now(UTC)),
                timeout=5,
            )
            assert outcome.plan.changes == [] and outcome.plan.launch == []
            await other.rollback()
        await agent.close()
