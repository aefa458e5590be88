"""Who may do what, on SQLite and Postgres: API keys scoped to projects with roles,
dataplane join tokens that bind a stream to one dataplane, the audit log, and secrets that
never show up in logs, events or errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc

from control_plane.domain.access import ALL_PROJECTS, Role
from control_plane.registry import Database, JoinTokens, KeyStore
from control_plane.server import RunningControlPlane
from tests.control_plane.harness import (
    FakeAgent,
    P,
    control_plane,
    gpu_pool,
    job_spec,
    status,
)

POLICY = "version: 1\ndefault:\n  tiers: [reserved, on_demand, spot]\n"


@dataclass
class Caller:
    """One API key's view of the control plane."""

    key: str
    jobs: jobs_pb2_grpc.JobServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    policies: admin_pb2_grpc.PolicyServiceStub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()

    async def call(self, method: Callable[..., Awaitable[Any]], request: Any) -> Any:
        return await method(request, metadata=self.metadata)

    async def submit(self, project: str) -> Any:
        response = await self.call(self.jobs.Submit, jobs_pb2.SubmitRequest(
            spec=job_spec(project=project)))
        return response.job


@asynccontextmanager
async def secured(database_url: str, **overrides: Any) -> AsyncIterator[
    tuple[RunningControlPlane, Callable[[str], Caller], str]
]:
    """A control plane with auth on, a way to call it with a key, and a bootstrap admin key
    made in the database (as `fleet keys create --db` does before the first start)."""
    async with control_plane(database_url, auth=True, **overrides) as (cp, clock):
        database = Database(database_url)
        try:
            _, admin_key = await KeyStore(database).create(
                "root", Role.ADMIN, [ALL_PROJECTS], "bootstrap", clock.now())
        finally:
            await database.close()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}")

        def caller(key: str) -> Caller:
            return Caller(key, jobs_pb2_grpc.JobServiceStub(channel),
                          admin_pb2_grpc.AdminServiceStub(channel),
                          admin_pb2_grpc.PolicyServiceStub(channel))

        try:
            yield cp, caller, admin_key
        finally:
            await channel.close()


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def new_key(admin: Caller, name: str, role: str, *projects: str) -> str:
    response = await admin.call(admin.admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(
        name=name, role=role, projects=list(projects)))
    assert response.secret.startswith(f"fleet_{response.key.id}_")
    return str(response.secret)


async def enroll(admin: Caller, name: str, region: str = "us-east-1") -> str:
    response = await admin.call(admin.admin.EnrollDataplane, admin_pb2.EnrollDataplaneRequest(
        name=name, region=region, cloud="test"))
    return str(response.join_token)


# -- API keys ------------------------------------------------------------------------------------


async def test_calls_need_a_valid_key_and_errors_never_show_its_secret(database_url: str) -> None:
    async with secured(database_url) as (_, caller, admin_key):
        anonymous = caller("")
        missing = await refused(anonymous.call(
            anonymous.jobs.List, jobs_pb2.ListJobsRequest()))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "metadata authorization: missing" in (missing.details() or "")

        forged = admin_key[:-4] + "AAAA"
        wrong = await refused(caller(forged).call(
            caller(forged).jobs.List, jobs_pb2.ListJobsRequest()))
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
        assert forged.split("_")[-1] not in (wrong.details() or "")

        admin = caller(admin_key)
        key = await new_key(admin, "ci-bot", "submitter", "vision")
        await caller(key).call(caller(key).jobs.List, jobs_pb2.ListJobsRequest())
        key_id = key.split("_")[1]
        await admin.call(admin.admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(id=key_id))
        revoked = await refused(caller(key).call(
            caller(key).jobs.List, jobs_pb2.ListJobsRequest()))
        assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"'ci-bot' ({key_id}) was revoked" in (revoked.details() or "")
        listed = await admin.call(admin.admin.ListApiKeys, admin_pb2.ListApiKeysRequest())
        assert [(k.name, k.role, list(k.projects), k.HasField("revoked_at"))
                for k in listed.keys] == [
            ("root", "admin", ["*"], False), ("ci-bot", "submitter", ["vision"], True)]


async def test_a_key_for_one_project_cannot_touch_another(database_url: str) -> None:
    async with secured(database_url) as (cp, caller, admin_key):
        admin = caller(admin_key)
        agent = FakeAgent(cp.port, "onprem", [gpu_pool("h100")], admin_key=admin_key,
                          token=await enroll(admin, "onprem"))
        await agent.join()
        vision = caller(await new_key(admin, "vision-team", "submitter", "vision"))
        nlp = caller(await new_key(admin, "nlp-team", "submitter", "nlp"))
        viewer = caller(await new_key(admin, "auditor", "viewer", ALL_PROJECTS))
        theirs = await nlp.submit("nlp")

        submit = await refused(vision.submit("nlp"))
        assert submit.code() == grpc.StatusCode.PERMISSION_DENIED
        assert submit.details() == (
            "API key 'vision-team' (submitter of vision) may not submit in project 'nlp'")
        for method, request in (
            (vision.jobs.Get, jobs_pb2.GetJobRequest(job_id=theirs.id)),
            (vision.jobs.Cancel, jobs_pb2.CancelJobRequest(job_id=theirs.id)),
            (vision.policies.ExplainJob, admin_pb2.ExplainJobRequest(job_id=theirs.id)),
        ):
            hidden = await refused(vision.call(method, request))
            assert hidden.code() == grpc.StatusCode.NOT_FOUND   # not even told it exists
        events = vision.jobs.Watch(jobs_pb2.WatchJobRequest(job_id=theirs.id),
                                   metadata=vision.metadata)
        assert (await refused(events.read())).code() == grpc.StatusCode.NOT_FOUND
        listed = await vision.call(vision.jobs.List, jobs_pb2.ListJobsRequest())
        assert list(listed.jobs) == []
        other = await refused(vision.call(vision.jobs.List, jobs_pb2.ListJobsRequest(
            project="nlp")))
        assert other.code() == grpc.StatusCode.PERMISSION_DENIED

        mine = await vision.submit("vision")
        assert [j.id for j in (await vision.call(
            vision.jobs.List, jobs_pb2.ListJobsRequest())).jobs] == [mine.id]
        assert {j.id for j in (await viewer.call(
            viewer.jobs.List, jobs_pb2.ListJobsRequest())).jobs} == {mine.id, theirs.id}
        cannot = await refused(viewer.submit("vision"))
        assert cannot.code() == grpc.StatusCode.PERMISSION_DENIED
        stop = await refused(viewer.call(viewer.jobs.Cancel, jobs_pb2.CancelJobRequest(
            job_id=mine.id)))
        assert stop.code() == grpc.StatusCode.PERMISSION_DENIED

        for method, request in (
            (vision.policies.ApplyPolicy, admin_pb2.ApplyPolicyRequest(document=POLICY)),
            (vision.admin.CordonDataplane, admin_pb2.CordonDataplaneRequest(name="onprem")),
            (vision.admin.EnrollDataplane, admin_pb2.EnrollDataplaneRequest(
                name="x", region="r", cloud="c")),
            (vision.admin.ListAuditEvents, admin_pb2.ListAuditEventsRequest()),
            (vision.admin.CreateApiKey, admin_pb2.CreateApiKeyRequest(
                name="mine", role="admin", projects=["*"])),
        ):
            denied = await refused(vision.call(method, request))
            assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs the admin role" in (denied.details() or "")
        await agent.close()


# -- dataplane identity --------------------------------------------------------------------------


async def test_a_join_token_binds_a_stream_to_its_dataplane(database_url: str) -> None:
    async with secured(database_url) as (cp, caller, admin_key):
        admin = caller(admin_key)
        east = await enroll(admin, "east")
        west = await enroll(admin, "west")

        for name, token, code, words in (
            ("east", "fleetdp_guess", grpc.StatusCode.UNAUTHENTICATED, "not the join token"),
            ("east", west, grpc.StatusCode.UNAUTHENTICATED, "not the join token"),
            ("north", east, grpc.StatusCode.UNAUTHENTICATED, "is not enrolled"),
        ):
            intruder = FakeAgent(cp.port, name, [gpu_pool("h100")], token=token)
            error = await refused(intruder.connect())
            assert error.code() == code and words in (error.details() or "")
            assert east not in (error.details() or "") and west not in (error.details() or "")
            await intruder.close()
        elsewhere = FakeAgent(cp.port, "east", [gpu_pool("h100")], region="eu-west-1", token=east)
        moved = await refused(elsewhere.connect())
        assert moved.code() == grpc.StatusCode.PERMISSION_DENIED
        await elsewhere.close()

        agent_east = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=east,
                               admin_key=admin_key)
        agent_west = FakeAgent(cp.port, "west", [gpu_pool("h100")], token=west,
                               admin_key=admin_key)
        await agent_west.join()
        job = await admin.submit("vision")
        launch = await agent_west.expect("launch")
        await agent_west.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await agent_east.join()
        # East reports west's attempt as its own: it is told to drop it; west's is untouched.
        await agent_east.heartbeat(status(launch.attempt_id, P.ATTEMPT_PHASE_SUCCEEDED))
        assert (await agent_east.expect("forget")).attempt_id == launch.attempt_id
        await asyncio.sleep(0.2)
        got = await admin.call(admin.jobs.Get, jobs_pb2.GetJobRequest(job_id=job.id))
        assert got.phase == P.JOB_PHASE_RUNNING and got.dataplane == "west"
        for agent in (agent_east, agent_west):
            await agent.close()


async def test_revoking_a_token_closes_the_stream_and_rotating_replaces_it(
    database_url: str,
) -> None:
    async with secured(database_url) as (cp, caller, admin_key):
        admin = caller(admin_key)
        token = await enroll(admin, "east")
        agent = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=token, admin_key=admin_key)
        await agent.join()
        await admin.call(admin.admin.RevokeJoinToken, admin_pb2.RevokeJoinTokenRequest(
            name="east"))
        ended = await refused(agent.call.read())
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "was revoked" in (ended.details() or "")
        again = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=token)
        assert (await refused(again.connect())).code() == grpc.StatusCode.UNAUTHENTICATED

        rotated = await admin.call(admin.admin.RotateJoinToken, admin_pb2.RotateJoinTokenRequest(
            name="east"))
        assert rotated.join_token != token
        fresh = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=rotated.join_token,
                          admin_key=admin_key)
        await fresh.join()
        taken = await refused(admin.call(admin.admin.EnrollDataplane,
                                         admin_pb2.EnrollDataplaneRequest(
                                             name="east", region="r", cloud="c")))
        assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
        for each in (agent, again, fresh):
            await each.close()


# -- the audit log, and secrets --------------------------------------------------------------------


async def test_changes_are_audited_and_no_secret_is_ever_logged(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with secured(database_url) as (cp, caller, admin_key):
        admin = caller(admin_key)
        token = await enroll(admin, "east")
        agent = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=token, admin_key=admin_key)
        await agent.join()
        team_key = await new_key(admin, "vision-team", "submitter", "vision")
        team = caller(team_key)
        job = await team.submit("vision")
        await agent.expect("launch")
        await admin.call(admin.policies.ApplyPolicy, admin_pb2.ApplyPolicyRequest(
            document=POLICY, comment="one rule"))
        await admin.call(admin.admin.CordonDataplane, admin_pb2.CordonDataplaneRequest(
            name="east", reason="upgrade"))
        await admin.call(admin.jobs.Cancel, jobs_pb2.CancelJobRequest(
            job_id=job.id, reason="wrong data"))
        own = await team.submit("vision")
        await team.call(team.jobs.Cancel, jobs_pb2.CancelJobRequest(job_id=own.id))

        audit = await admin.call(admin.admin.ListAuditEvents, admin_pb2.ListAuditEventsRequest())
        actions = [(e.action, e.target) for e in reversed(audit.events)]
        assert actions[:1] == [("dataplane.enroll", "east")]
        assert [a for a, _ in actions[1:]] == [
            "key.create", "policy.apply", "dataplane.cordon", "job.cancel"]
        cancel = audit.events[0]
        assert cancel.actor.startswith("root (") and "submitted by vision-team" in cancel.detail
        only = await admin.call(admin.admin.ListAuditEvents, admin_pb2.ListAuditEventsRequest(
            action="dataplane."))
        assert [e.action for e in only.events] == ["dataplane.cordon", "dataplane.enroll"]

        events = [e async for e in admin.jobs.Watch(
            jobs_pb2.WatchJobRequest(job_id=job.id), metadata=admin.metadata)]
        await agent.close()
    secrets_shown = [admin_key, team_key, token]
    for secret in secrets_shown:
        assert secret not in caplog.text
        assert all(secret not in e.message for e in events)
        assert all(secret not in e.detail for e in audit.events)


async def test_a_token_revoked_elsewhere_ends_the_stream_at_the_next_report(
    database_url: str,
) -> None:
    """Revoked through another replica (here: straight in the database), the stream this
    replica holds ends when the agent next reports, and the report changes nothing."""
    async with secured(database_url) as (cp, caller, admin_key):
        admin = caller(admin_key)
        token = await enroll(admin, "east")
        agent = FakeAgent(cp.port, "east", [gpu_pool("h100")], token=token, admin_key=admin_key)
        await agent.join()
        job = await admin.submit("vision")
        launch = await agent.expect("launch")
        database = Database(database_url)
        try:
            assert await JoinTokens(database).revoke("east", datetime.now(UTC))
        finally:
            await database.close()
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        ended = await refused(agent.call.read())
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "was revoked" in (ended.details() or "")
        got = await admin.call(admin.jobs.Get, jobs_pb2.GetJobRequest(job_id=job.id))
        assert got.phase == P.JOB_PHASE_SCHEDULED   # the revoked agent's report was refused
        await agent.close()
