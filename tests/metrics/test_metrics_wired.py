"""The hot paths feed the control plane's metrics: a job submitted, placed, run and ended
through real servicers shows up on the /metrics page as an operator would read it."""

from __future__ import annotations

from fleet.v1 import types_pb2
from prometheus_client.parser import text_string_to_metric_families

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


def _samples(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page.decode())
        for sample in family.samples
    }


async def test_submits_placements_reports_and_ends_are_counted(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), job_client(cp.port) as jobs:
        assert cp.metrics is not None
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        ok = await submit(jobs, job_spec())
        failing = await submit(jobs, job_spec(retry_budget=0))
        launches = {(await agent.expect("launch")).job_id: None for _ in range(2)}
        assert set(launches) == {ok.id, failing.id}
        await agent.update(status(f"{ok.id}-1", P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await agent.update(
            status(f"{failing.id}-1", P.ATTEMPT_PHASE_FAILED, exit_code=3, reason="Error")
        )
        await wait_for_phase(jobs, ok.id, P.JOB_PHASE_SUCCEEDED)
        await wait_for_phase(jobs, failing.id, P.JOB_PHASE_FAILED)
        page, _ = await cp.metrics.render()
        samples = _samples(page)
        assert samples[("fleet_jobs_submitted_total", ())] == 2
        assert samples[("fleet_placement_latency_seconds_count", ())] == 2
        ended = "fleet_attempts_ended_total"
        assert samples[(ended, (("phase", "succeeded"), ("reason", "none")))] == 1
        assert samples[(ended, (("phase", "failed"), ("reason", "Error")))] == 1
        # join's heartbeat and the two updates, at least: each is one handled report
        assert samples[("fleet_heartbeat_handling_seconds_count", ())] >= 3
        await agent.close()
