"""The routing policy through the real PolicyService and scheduler, on SQLite and Postgres:
versions, validation, dry run, rollback, explanations, and the policy steering real
placements (residency, quota, rule priority, submit-time refusal)."""

from __future__ import annotations

import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, types_pb2

from tests.control_plane.harness import (
    FakeAgent,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    policy_client,
    status,
    wait_for_phase,
)

P = types_pb2

EU_ONLY = """\
version: 1
quotas:
  interns: {concurrent_gpus: 2}
rules:
  - name: eu-residency
    match: {projects: [gdpr]}
    regions: [europe-west4]
  - name: urgent
    match: {labels: {urgent: "yes"}}
    priority: 100
default:
  tiers: [reserved, on_demand, spot]
"""


async def two_regions(port: int) -> tuple[FakeAgent, FakeAgent]:
    us = FakeAgent(port, "us", [gpu_pool("h100", total=4)], region="us-east-1")
    eu = FakeAgent(
        port,
        "eu",
        [gpu_pool("h100", total=4, price=3.0, tier=P.PURCHASE_TYPE_ON_DEMAND)],
        region="europe-west4",
    )
    for agent in (us, eu):
        await agent.join()
    return us, eu


async def apply(
    policies: admin_pb2_grpc.PolicyServiceStub, document: str, **fields: object
) -> admin_pb2.ApplyPolicyResponse:
    request = admin_pb2.ApplyPolicyRequest(document=document, author="ops@test", **fields)  # type: ignore[arg-type]
    return await policies.ApplyPolicy(request)  # type: ignore[no-any-return]


async def test_versions_history_show_and_rollback(database_url: str) -> None:
    async with control_plane(database_url) as (cp, _), policy_client(cp.port) as policies:
        assert (await policies.GetPolicy(admin_pb2.GetPolicyRequest())).version == 0
        first = await apply(policies, EU_ONLY, comment="residency")
        second = await apply(policies, "version: 1\n")
        assert (first.applied.version, second.applied.version) == (1, 2)
        history = await policies.ListPolicyVersions(admin_pb2.ListPolicyVersionsRequest())
        assert [v.version for v in history.versions] == [2, 1] and history.current == 2
        assert history.versions[1].comment == "residency"
        assert history.versions[1].author == "ops@test"
        shown = await policies.GetPolicy(admin_pb2.GetPolicyRequest(version=1))
        assert shown.document == EU_ONLY
        rolled = await policies.RollbackPolicy(
            admin_pb2.RollbackPolicyRequest(version=1, author="ops@test")
        )
        assert rolled.version == 3 and rolled.document == EU_ONLY
        assert rolled.comment == "rollback to version 1"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await policies.GetPolicy(admin_pb2.GetPolicyRequest(version=42))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_invalid_document_names_line_and_field_and_changes_nothing(
    database_url: str,
) -> None:
    async with control_plane(database_url) as (cp, _), policy_client(cp.port) as policies:
        await apply(policies, EU_ONLY)
        bad = "version: 1\nrules:\n  - name: x\n    match: {projects: [a]}\n    regionz: [eu]\n"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await apply(policies, bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "policy.yaml:5:5: rules[0].regionz" in (caught.value.details() or "")
        history = await policies.ListPolicyVersions(admin_pb2.ListPolicyVersionsRequest())
        assert history.current == 1


async def test_residency_quota_and_priority_steer_real_placements(database_url: str) -> None:
    async with (
        control_plane(database_url, schedule_interval_s=3600) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        us, eu = await two_regions(cp.port)
        await apply(policies, EU_ONLY)

        # Residency: reserved us-east-1 is cheaper and free, but gdpr runs only in the EU.
        gdpr = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="gdpr")))).job
        other = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="web")))).job
        await cp.scheduler.tick()
        assert (await wait_for_phase(jobs, gdpr.id, P.JOB_PHASE_SCHEDULED)).dataplane == "eu"
        assert (await wait_for_phase(jobs, other.id, P.JOB_PHASE_SCHEDULED)).dataplane == "us"

        # Quota: interns may hold 2 GPUs at once; the second 2-GPU job waits and says why.
        first = (
            await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="interns", gpus=2)))
        ).job
        second = (
            await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="interns", gpus=2)))
        ).job
        await cp.scheduler.tick()
        pair = [await jobs.Get(jobs_pb2.GetJobRequest(job_id=j.id)) for j in (first, second)]
        assert sorted(j.phase for j in pair) == [P.JOB_PHASE_QUEUED, P.JOB_PHASE_SCHEDULED]
        waiting = next(j for j in pair if j.phase == P.JOB_PHASE_QUEUED)
        assert waiting.message == (
            "waiting: project interns uses 2 of 2 concurrent GPUs; this job needs 2"
        )

        for agent in (us, eu):
            await agent.close()


async def test_a_higher_priority_rule_is_placed_first(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        agent = FakeAgent(cp.port, "us", [gpu_pool("h100", total=1)], region="us-east-1")
        await agent.join()
        await apply(policies, EU_ONLY)
        busy = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="web")))).job
        launch = await agent.expect("launch")
        agent.pools = [gpu_pool("h100", total=1, free=0)]
        await agent.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await wait_for_phase(jobs, busy.id, P.JOB_PHASE_RUNNING)
        plain = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="web")))).job
        urgent = (
            await jobs.Submit(
                jobs_pb2.SubmitRequest(spec=job_spec(project="web", labels={"urgent": "yes"}))
            )
        ).job
        await cp.scheduler.tick()
        assert (await jobs.Get(jobs_pb2.GetJobRequest(job_id=urgent.id))).phase == (
            P.JOB_PHASE_QUEUED
        ), "the pool is busy"

        # The running job ends and frees the GPU: the urgent job, submitted last, goes first.
        agent.pools = [gpu_pool("h100", total=1, free=1)]
        await agent.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED, exit_code=0))
        await wait_for_phase(jobs, busy.id, P.JOB_PHASE_SUCCEEDED)
        assert (await agent.expect("launch")).job_id == urgent.id
        assert (await jobs.Get(jobs_pb2.GetJobRequest(job_id=plain.id))).phase == (
            P.JOB_PHASE_QUEUED
        )
        await agent.close()


async def test_submit_is_refused_when_the_policy_allows_no_pool(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        us = FakeAgent(cp.port, "us", [gpu_pool("h100")], region="us-east-1")
        await us.join()
        await apply(policies, EU_ONLY)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="gdpr")))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "eu-residency" in (caught.value.details() or "")
        await us.close()


async def test_explain_lists_every_pool_with_its_reason(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        us, eu = await two_regions(cp.port)
        await apply(policies, EU_ONLY)
        what_if = await policies.ExplainPlacement(
            admin_pb2.ExplainPlacementRequest(spec=job_spec(project="gdpr"))
        )
        assert what_if.rule == "eu-residency" and what_if.policy_version == 1
        by_dp = {c.dataplane: c for c in what_if.candidates}
        assert by_dp["eu"].chosen and not by_dp["us"].chosen
        assert "us-east-1" in by_dp["us"].reason
        assert what_if.summary == "placed on eu/h100"

        job = (await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project="gdpr")))).job
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_SCHEDULED)
        explained = await policies.ExplainJob(admin_pb2.ExplainJobRequest(job_id=job.id))
        assert explained.job_id == job.id and explained.rule == "eu-residency"
        assert explained.summary.startswith("scheduled: placed on eu/h100:")
        assert "eu-residency" in explained.summary
        assert {c.dataplane for c in explained.candidates} == {"us", "eu"}
        for agent in (us, eu):
            await agent.close()


async def test_dry_run_lists_jobs_that_would_route_differently(database_url: str) -> None:
    async with (
        control_plane(database_url) as (cp, _),
        job_client(cp.port) as jobs,
        policy_client(cp.port) as policies,
    ):
        us, eu = await two_regions(cp.port)
        for project in ("gdpr", "web"):
            await jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(project=project)))
        dry = await apply(policies, EU_ONLY, dry_run=True)
        assert dry.replayed == 2 and not dry.HasField("applied")
        assert [(c.project, c.before, c.after) for c in dry.changes] == [
            ("gdpr", "us/h100", "eu/h100")
        ]
        assert "eu-residency" in dry.changes[0].why
        history = await policies.ListPolicyVersions(admin_pb2.ListPolicyVersionsRequest())
        assert history.current == 0, "a dry run applies nothing"
        for agent in (us, eu):
            await agent.close()
