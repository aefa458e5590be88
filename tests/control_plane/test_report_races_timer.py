"""The lost timer and an agent's report race for the same attempt (the chaos harness found
an attempt recorded LOST, then overwritten SUCCEEDED, its job run twice). The report holds
its dataplane's row while it works; the timer waits for it, then finds nothing live."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from fleet.v1 import jobs_pb2

from control_plane.domain.phases import AttemptPhase
from control_plane.domain.reconcile import ReportedAttempt
from control_plane.registry import DataplaneStore
from control_plane.registry import reports as reports_module
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


async def test_the_lost_timer_waits_for_a_report_in_flight(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        control_plane(database_url, schedule_interval_s=3600) as (cp, clock),
        job_client(cp.port) as jobs,
    ):
        agent = FakeAgent(cp.port, "racer", [gpu_pool("h100", total=1)])
        await agent.join()
        job = await submit(jobs, job_spec(retry_budget=5))
        await cp.scheduler.tick()
        launch = await agent.expect("launch")
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_RUNNING)

        store = DataplaneStore(cp.database)
        now = clock.now() + timedelta(minutes=5)
        timer: dict[str, Any] = {}
        apply_change = reports_module.apply_attempt_change

        async def report_step(*args: Any) -> bool:
            """Between the report's read and its write, the lost timer fires."""
            if "task" not in timer:
                timer["task"] = asyncio.create_task(
                    store.expire(["racer"], now, heard_before=now + timedelta(hours=1)))
                done, _ = await asyncio.wait({timer["task"]}, timeout=1.0)
                timer["finished_during_the_report"] = bool(done)
            return await apply_change(*args)

        monkeypatch.setattr(reports_module, "apply_attempt_change", report_step)
        succeeded = ReportedAttempt(launch.attempt_id, launch.epoch, AttemptPhase.SUCCEEDED,
                                    exit_code=0)
        await store.apply_report("racer", None, [succeeded], full_state=False, now=now)
        requeued = await timer["task"]

        assert not timer["finished_during_the_report"], "the timer did not wait"
        assert requeued == []
        got = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
        assert got.phase == P.JOB_PHASE_SUCCEEDED
        assert [(a.phase, a.reason) for a in got.attempts] == [(P.ATTEMPT_PHASE_SUCCEEDED, "")]
        await agent.close()
