"""The control plane over a real gRPC channel, on SQLite and on a real Postgres.

A fake agent drives the agent stream step by step; every assertion is something a user or
an operator would check through the API.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, jobs_pb2, types_pb2

from tests.control_plane.harness import (
    FakeAgent,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    policy_client,
    status,
    submit,
    wait_for_phase,
)

P = types_pb2
A_RUNNING, A_SUCCEEDED, A_FAILED = (
    P.ATTEMPT_PHASE_RUNNING,
    P.ATTEMPT_PHASE_SUCCEEDED,
    P.ATTEMPT_PHASE_FAILED,
)


async def test_a_job_runs_on_an_agent_and_succeeds(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        welcome = await agent.connect()
        assert welcome.heartbeat_interval.seconds == 1
        await agent.heartbeat()
        await agent.registered()
        job = await submit(jobs, job_spec(gpus=2))
        assert job.phase == P.JOB_PHASE_QUEUED

        launch = await agent.expect("launch")
        assert (launch.job_id, launch.epoch, launch.pool) == (job.id, 1, "h100")
        assert launch.attempt_id == f"{job.id}-1"
        assert list(launch.spec.command) == ["train.py"]
        assert launch.spec.resources.gpus == 2

        await agent.update(status(launch.attempt_id, A_RUNNING))
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)
        await agent.update(status(launch.attempt_id, A_SUCCEEDED, exit_code=0))
        done = await wait_for_phase(jobs, job.id, P.JOB_PHASE_SUCCEEDED)
        forget = await agent.expect("forget")
        assert forget.attempt_id == launch.attempt_id

        assert done.dataplane == "onprem" and done.pool == "h100"
        assert [(a.id, a.phase, a.exit_code) for a in done.attempts] == [
            (launch.attempt_id, A_SUCCEEDED, 0)
        ]
        assert done.started_at.seconds and done.finished_at.seconds
        events = [e async for e in jobs.Watch(jobs_pb2.WatchJobRequest(job_id=job.id))]
        assert [e.kind for e in events] == ["submitted", "scheduled", "started", "succeeded"]
        assert events[-1].phase == P.JOB_PHASE_SUCCEEDED
        await agent.close()


async def test_submit_with_the_same_client_key_returns_the_same_job(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        first = await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key="exec-1/n0/0"))
        again = await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key="exec-1/n0/0"))
        other = await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key="exec-1/n0/1"))
        assert first.created and not again.created and other.created
        assert again.job.id == first.job.id != other.job.id
        listed = await jobs.List(jobs_pb2.ListJobsRequest(project="vision"))
        assert len(listed.jobs) == 2
        await agent.close()


async def test_impossible_and_malformed_jobs_are_refused_and_nothing_is_stored(
    database_url: str,
) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=8)])
        await agent.join()
        await asyncio.sleep(0.1)
        cases = [
            (
                job_spec(gpus=1, model="B200"),
                grpc.StatusCode.FAILED_PRECONDITION,
                "resources.gpu_model: no dataplane has GPU model 'B200' "
                "(models in the fleet: H100)",
            ),
            (
                job_spec(gpus=16),
                grpc.StatusCode.FAILED_PRECONDITION,
                "resources.gpus: no pool has 16 GPUs of model H100 (largest: 8 in onprem/h100)",
            ),
            (
                P.JobSpec(project="Vision!", command=["x"]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "spec.project: 'Vision!' is not a valid name",
            ),
            (
                P.JobSpec(project="vision"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "spec.command: required",
            ),
            (
                job_spec(env={"1BAD": "x"}),
                grpc.StatusCode.INVALID_ARGUMENT,
                "spec.env: '1BAD' is not a valid environment variable name",
            ),
            (
                P.JobSpec(project="vision", command=["x"], service_account="Trainer_SA"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "spec.service_account: 'Trainer_SA' is not a valid Kubernetes name",
            ),
        ]
        for spec, code, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await submit(jobs, spec)
            assert caught.value.code() == code
            assert message in (caught.value.details() or "")
        listed = await jobs.List(jobs_pb2.ListJobsRequest())
        assert list(listed.jobs) == []
        await agent.close()


async def test_cancel_stops_the_attempt_and_the_job_is_never_retried(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec())
        launch = await agent.expect("launch")
        await agent.update(status(launch.attempt_id, A_RUNNING))
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)

        cancelled = await jobs.Cancel(jobs_pb2.CancelJobRequest(job_id=job.id, reason="wrong data"))
        assert cancelled.phase == P.JOB_PHASE_CANCELLED and cancelled.message == "wrong data"
        cancel = await agent.expect("cancel")
        assert cancel.attempt_id == launch.attempt_id
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_CANCELLED))
        await agent.expect("forget")
        await asyncio.sleep(0.2)
        final = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert final.phase == P.JOB_PHASE_CANCELLED
        assert [a.phase for a in final.attempts] == [P.ATTEMPT_PHASE_CANCELLED]
        assert not [m for m in agent.drain_inbox() if m.WhichOneof("body") == "launch"]
        again = await jobs.Cancel(jobs_pb2.CancelJobRequest(job_id=job.id))
        assert again.phase == P.JOB_PHASE_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.Cancel(jobs_pb2.CancelJobRequest(job_id="j-nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        await agent.close()


async def test_failures_spend_the_retry_budget_then_fail_the_job(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec(retry_budget=1))
        first = await agent.expect("launch")
        await agent.update(status(first.attempt_id, A_FAILED, exit_code=3, message="exit code 3"))
        second = await agent.expect("launch")
        assert second.epoch == 2 and second.attempt_id == f"{job.id}-2"
        await agent.update(status(second.attempt_id, A_FAILED, exit_code=3, message="exit code 3"))
        failed = await wait_for_phase(jobs, job.id, P.JOB_PHASE_FAILED)
        assert failed.retries_used == 1
        assert failed.message == (
            "attempt failed: exit code 3 (retry budget of 1 spent); attempts: "
            "1 failed on onprem (exit code 3), 2 failed on onprem (exit code 3)"
        )
        assert [a.phase for a in failed.attempts] == [A_FAILED, A_FAILED]
        await agent.close()


async def test_full_state_reconcile_after_an_agent_restart(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        kept = await submit(jobs, job_spec())
        kept_launch = await agent.expect("launch")
        vanished = await submit(jobs, job_spec())
        vanished_launch = await agent.expect("launch")
        for launch in (kept_launch, vanished_launch):
            await agent.update(status(launch.attempt_id, A_RUNNING))
        await wait_for_phase(jobs, vanished.id, P.JOB_PHASE_RUNNING)
        await agent.close()

        # The agent comes back holding only one of them, plus one nobody placed.
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.connect()
        await agent.heartbeat(
            status(kept_launch.attempt_id, A_RUNNING), status("j-000000000000-1", A_RUNNING)
        )
        cancel = await agent.expect("cancel")
        assert cancel.attempt_id == "j-000000000000-1"
        relaunch = await agent.expect("launch")
        assert relaunch.attempt_id == f"{vanished.id}-2"
        job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=vanished.id))
        assert next((a.phase, a.reason) for a in job.attempts) == (
            P.ATTEMPT_PHASE_LOST,
            "AgentLostAttempt",
        )
        assert job.retries_used == 1
        still = await jobs.Get(jobs_pb2.GetJobRequest(job_id=kept.id))
        assert still.phase == P.JOB_PHASE_RUNNING and len(still.attempts) == 1
        await agent.close()


async def test_a_silent_dataplane_is_lost_and_its_jobs_run_elsewhere(database_url: str) -> None:
    async with control_plane(database_url) as (cp, clock), job_client(cp.port) as jobs:
        east = FakeAgent(cp.port, "east", [gpu_pool("h100", total=1)])
        west = FakeAgent(cp.port, "west", [gpu_pool("h100", total=1, price=5.0)])
        for agent in (east, west):
            await agent.join()
        job = await submit(jobs, job_spec())
        launch = await east.expect("launch")
        await east.update(status(launch.attempt_id, A_RUNNING))
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)

        # Everyone silent: the control plane suspects its own network and expires nothing.
        clock.advance(120)
        await cp.scheduler.tick()
        assert (await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))).phase == P.JOB_PHASE_RUNNING

        # West keeps reporting; east stays silent past lost_after.
        await west.heartbeat()
        await asyncio.sleep(0.1)
        await cp.scheduler.tick()
        relaunch = await west.expect("launch")
        assert relaunch.attempt_id == f"{job.id}-2"
        moved = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert moved.dataplane == "west"
        assert (moved.attempts[0].phase, moved.attempts[0].reason) == (
            P.ATTEMPT_PHASE_LOST,
            "DataplaneLost",
        )

        # East heals and reports its stale attempt: it is told to kill it, its result ignored.
        await east.heartbeat(status(launch.attempt_id, A_RUNNING))
        assert (await east.expect("cancel")).attempt_id == launch.attempt_id
        await east.update(status(launch.attempt_id, A_SUCCEEDED, exit_code=0))
        assert (await east.expect("forget")).attempt_id == launch.attempt_id
        after = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert (
            after.phase == P.JOB_PHASE_SCHEDULED and after.attempts[0].phase == P.ATTEMPT_PHASE_LOST
        )
        for agent in (east, west):
            await agent.close()


async def test_a_burst_spreads_before_the_next_heartbeat(database_url: str) -> None:
    async with (
        control_plane(database_url, schedule_interval_s=3600) as (cp, _),
        job_client(cp.port) as jobs,
    ):
        a = FakeAgent(cp.port, "a", [gpu_pool("h100", total=4)])
        b = FakeAgent(cp.port, "b", [gpu_pool("h100", total=4)])
        for agent in (a, b):
            await agent.join()
        await asyncio.sleep(0.1)
        ids = [(await submit(jobs, job_spec(gpus=2))).id for _ in range(5)]
        await cp.scheduler.tick()
        placed = {}
        for job_id in ids:
            job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job_id))
            placed[job_id] = job.dataplane if job.phase == P.JOB_PHASE_SCHEDULED else None
        assert sorted(d for d in placed.values() if d) == ["a", "a", "b", "b"]
        waiting = [j for j, d in placed.items() if d is None]
        assert len(waiting) == 1
        job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=waiting[0]))
        assert job.message == (
            "waiting: no capacity: 2 pools fit this job under rule default, "
            "none with 2 GPUs free now"
        )
        for agent in (a, b):
            await agent.close()


async def test_list_filters_and_pages(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=1)])
        await agent.join()
        for project in ["vision"] * 5 + ["speech"] * 2:
            await submit(jobs, job_spec(project=project))
        seen: list[str] = []
        token = ""
        while True:
            page = await jobs.List(
                jobs_pb2.ListJobsRequest(project="vision", page_size=2, page_token=token)
            )
            seen += [j.id for j in page.jobs]
            assert all(j.spec.project == "vision" for j in page.jobs)
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len(set(seen)) == 5
        await agent.expect("launch")
        scheduled = await jobs.List(jobs_pb2.ListJobsRequest(phases=[P.JOB_PHASE_SCHEDULED]))
        assert len(scheduled.jobs) == 1 and scheduled.jobs[0].dataplane == "onprem"
        on_dp = await jobs.List(jobs_pb2.ListJobsRequest(dataplane="onprem"))
        assert [j.id for j in on_dp.jobs] == [scheduled.jobs[0].id]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.List(jobs_pb2.ListJobsRequest(page_token="garbage"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await agent.close()


async def test_logs_travel_over_the_agents_stream(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec())
        launch = await agent.expect("launch")

        async def answer() -> None:
            request = await agent.expect("log_request")
            assert request.attempt_id == launch.attempt_id
            for data, eof in ((b"epoch 1 loss 0.9\n", False), (b"epoch 2 loss 0.4\n", True)):
                await agent.outbox.put(
                    agent_pb2.AgentMessage(
                        log_chunk=types_pb2.LogChunk(
                            request_id=request.request_id, data=data, eof=eof
                        )
                    )
                )

        answering = asyncio.create_task(answer())
        chunks = [c.data async for c in jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id))]
        await answering
        assert b"".join(chunks) == b"epoch 1 loss 0.9\nepoch 2 loss 0.4\n"
        await agent.close()
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id)):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stays in its region" in (caught.value.details() or "")


async def test_dataplanes_are_listed_with_pools_and_health(database_url: str) -> None:
    async with control_plane(database_url) as (cp, clock):
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", free=6)])
        await agent.join()
        await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            (dp,) = (await admin.ListDataplanes(admin_pb2.ListDataplanesRequest())).dataplanes
            assert (dp.name, dp.region, dp.connected, dp.health) == (
                "onprem",
                "us-east-1",
                True,
                P.DATAPLANE_HEALTH_HEALTHY,
            )
            assert [(p.name, p.gpu_total, p.gpu_free, p.gpu_model) for p in dp.pools] == [
                ("h100", 8, 6, "H100")
            ]
            clock.advance(20)
            (dp,) = (await admin.ListDataplanes(admin_pb2.ListDataplanesRequest())).dataplanes
            assert dp.health == P.DATAPLANE_HEALTH_STALE
        await agent.close()


async def test_a_hold_lasts_until_a_heartbeat_counts_the_attempt(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100", total=2)])
        await agent.join()
        first = await submit(jobs, job_spec(gpus=2))
        launch = await agent.expect("launch")
        # The agent starts it and says so between heartbeats: its pool is full, but the
        # control plane has not heard a new free count yet.
        await agent.update(status(launch.attempt_id, A_RUNNING))
        await wait_for_phase(jobs, first.id, P.JOB_PHASE_RUNNING)
        second = await submit(jobs, job_spec(gpus=2))
        await cp.scheduler.tick()
        waiting = await jobs.Get(jobs_pb2.GetJobRequest(job_id=second.id))
        assert waiting.phase == P.JOB_PHASE_QUEUED
        assert waiting.message == (
            "waiting: no capacity: 1 pool fits this job under rule default, "
            "none with 2 GPUs free now"
        )

        # The heartbeat counts it in the pool (0 free); when it ends, the next one frees it.
        agent.pools = [gpu_pool("h100", total=2, free=0)]
        await agent.heartbeat(status(launch.attempt_id, A_RUNNING))
        await cp.scheduler.tick()
        assert (await jobs.Get(jobs_pb2.GetJobRequest(job_id=second.id))).phase == (
            P.JOB_PHASE_QUEUED
        )
        agent.pools = [gpu_pool("h100", total=2, free=2)]
        await agent.heartbeat(status(launch.attempt_id, A_SUCCEEDED, exit_code=0))
        relaunch = await agent.expect("launch")
        assert relaunch.job_id == second.id
        await agent.close()


async def test_inputs_travel_to_the_agent_and_outputs_come_back(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        agent = FakeAgent(cp.port, "eu", [gpu_pool("h100")])
        await agent.join()
        job = await submit(jobs, job_spec(inputs=b"\x0a\x03lit"))
        launch = await agent.expect("launch")
        assert launch.spec.inputs == b"\x0a\x03lit"
        await agent.update(status(launch.attempt_id, A_SUCCEEDED, exit_code=0, outputs=b"out-uri"))
        done = await wait_for_phase(jobs, job.id, P.JOB_PHASE_SUCCEEDED)
        assert done.outputs == b"out-uri"
        listed = await jobs.List(jobs_pb2.ListJobsRequest())
        assert listed.jobs[0].outputs == b""  # List stays small
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(jobs, job_spec(inputs=b"x" * (4 * 1024 * 1024 + 1)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "pass large data by URI" in (caught.value.details() or "")
        await agent.close()


async def test_a_job_must_fit_on_one_node_of_a_multi_node_pool(database_url: str) -> None:
    """A Kubernetes pool of two 8-GPU nodes with 4 GPUs free on each has 8 free, yet an
    8-GPU job fits on neither node: it waits; a 16-GPU job can never run and is refused."""
    async with (
        control_plane(database_url, schedule_interval_s=3600) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        nodes = gpu_pool("a100", model="A100", total=16, free=8)
        nodes.gpu_node_size, nodes.gpu_node_free = 8, 4
        agent = FakeAgent(cp.port, "gke", [nodes])
        await agent.join()
        await asyncio.sleep(0.1)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(jobs, job_spec(gpus=16, model="A100"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "(largest: 8 on one node in gke/a100)" in (caught.value.details() or "")

        big = await submit(jobs, job_spec(gpus=8, model="A100"))
        await cp.scheduler.tick()
        explained = await policies.ExplainJob(admin_pb2.ExplainJobRequest(job_id=big.id))
        assert [c.reason for c in explained.candidates] == [
            "4 of 16 GPUs free on one node < 8 asked"]

        small = await submit(jobs, job_spec(gpus=4, model="A100"))
        await cp.scheduler.tick()
        big_job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=big.id))
        small_job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=small.id))
        assert big_job.phase == P.JOB_PHASE_QUEUED
        assert (small_job.phase, small_job.dataplane) == (P.JOB_PHASE_SCHEDULED, "gke")
        await agent.close()
