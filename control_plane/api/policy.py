"""PolicyService: apply (with a dry run), versions, rollback, and explanations."""

from __future__ import annotations

import grpc
from fleet.v1 import admin_pb2, admin_pb2_grpc

from control_plane.api.access import Access
from control_plane.api.errors import Context, refuse
from control_plane.api.validation import (
    check,
    id_problem,
    policy_problems,
    rollback_problems,
    spec_problems,
    version_problem,
)
from control_plane.clock import Clock
from control_plane.domain.access import Action
from control_plane.domain.limits import MAX_REPLAY
from control_plane.domain.phases import DataplaneHealth, JobPhase
from control_plane.domain.placement import (
    CapacityLedger,
    DataplaneView,
    JobDemand,
    never_fits,
    place,
)
from control_plane.domain.policy import Policy, PolicyError, parse_policy
from control_plane.domain.records import PolicyVersionRecord, PoolRecord
from control_plane.registry import DataplaneStore, JobStore, PolicyStore
from control_plane.scheduler import Scheduler
from control_plane.wire import demand_from_json, explanation_to_proto, spec_to_json, timestamp

POLICY_SOURCE = "policy.yaml"
DEFAULT_REPLAY = 200


class PolicyService(admin_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self,
        policies: PolicyStore,
        jobs: JobStore,
        dataplanes: DataplaneStore,
        scheduler: Scheduler,
        clock: Clock,
        access: Access,
    ) -> None:
        self._access = access
        self._policies = policies
        self._jobs = jobs
        self._dataplanes = dataplanes
        self._scheduler = scheduler
        self._clock = clock

    async def ApplyPolicy(
        self, request: admin_pb2.ApplyPolicyRequest, context: Context
    ) -> admin_pb2.ApplyPolicyResponse:
        caller = await self._access.require(context, Action.ADMIN)
        await check(context, policy_problems(request))
        try:
            candidate = parse_policy(request.document, POLICY_SOURCE)
        except PolicyError as error:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if request.replay_jobs > MAX_REPLAY:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"replay_jobs: {request.replay_jobs} is more than {MAX_REPLAY}",
            )
        if request.dry_run:
            replayed, changes = await self._replay(candidate, request.replay_jobs or DEFAULT_REPLAY)
            return admin_pb2.ApplyPolicyResponse(replayed=replayed, changes=changes)
        author = request.author or (caller.describe() if self._access.enabled else "")
        if not author:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "author: required (who applies the policy)",
            )
        applied = await self._policies.add(
            request.document, author, request.comment, self._clock.now()
        )
        await self._access.audit(
            caller, "policy.apply", f"version {applied.version}", request.comment
        )
        self._scheduler.wake()
        return admin_pb2.ApplyPolicyResponse(applied=_version(applied))

    async def GetPolicy(
        self, request: admin_pb2.GetPolicyRequest, context: Context
    ) -> admin_pb2.PolicyVersion:
        await self._access.require(context, Action.VIEW_FLEET)
        await check(context, [version_problem(request.version)])
        if request.version == 0:
            current = await self._policies.current()
            return admin_pb2.PolicyVersion() if current is None else _version(current)
        found = await self._policies.get(request.version)
        if found is None:
            await refuse(
                context, grpc.StatusCode.NOT_FOUND, f"version: no policy version {request.version}"
            )
        return _version(found)

    async def ListPolicyVersions(
        self, request: admin_pb2.ListPolicyVersionsRequest, context: Context
    ) -> admin_pb2.ListPolicyVersionsResponse:
        await self._access.require(context, Action.VIEW_FLEET)
        history = await self._policies.history()
        versions = [_version(v, with_document=False) for v in history]
        return admin_pb2.ListPolicyVersionsResponse(
            versions=versions, current=history[0].version if history else 0
        )

    async def RollbackPolicy(
        self, request: admin_pb2.RollbackPolicyRequest, context: Context
    ) -> admin_pb2.PolicyVersion:
        caller = await self._access.require(context, Action.ADMIN)
        await check(context, rollback_problems(request))
        old = await self._policies.get(request.version)
        if old is None:
            await refuse(
                context, grpc.StatusCode.NOT_FOUND, f"version: no policy version {request.version}"
            )
        author = request.author or (caller.describe() if self._access.enabled else "")
        if not author:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "author: required (who rolls the policy back)",
            )
        applied = await self._policies.add(
            old.document,
            author,
            f"rollback to version {old.version}",
            self._clock.now(),
        )
        await self._access.audit(
            caller, "policy.rollback", f"version {applied.version}", f"to version {old.version}"
        )
        self._scheduler.wake()
        return _version(applied)

    async def ExplainJob(
        self, request: admin_pb2.ExplainJobRequest, context: Context
    ) -> admin_pb2.Explanation:
        caller = await self._access.caller(context)
        await check(context, [id_problem("job_id", request.job_id)])
        job = await self._jobs.get(request.job_id)
        if job is None or not caller.may(Action.READ, job.project):
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
        version, decision = await self._scheduler.explain(demand_from_json(job.id, job.spec))
        explanation = explanation_to_proto(decision, version, job.id)
        if job.phase is not JobPhase.QUEUED:
            # Placed or ended: say what happened; the candidates show the fleet as it is now.
            explanation.summary = (
                f"{job.phase.value}: {job.message or job.dataplane}; "
                f"if submitted now: {decision.summary}"
            )
        return explanation

    async def ExplainPlacement(
        self, request: admin_pb2.ExplainPlacementRequest, context: Context
    ) -> admin_pb2.Explanation:
        await check(context, spec_problems(request.spec, what_if=True))
        await self._access.require(context, Action.READ, request.spec.project)
        demand = demand_from_json("what-if", spec_to_json(request.spec))
        version, decision = await self._scheduler.explain(demand)
        return explanation_to_proto(decision, version)

    async def _replay(
        self, candidate: Policy, count: int
    ) -> tuple[int, list[admin_pb2.RoutingChange]]:
        """Route the last `count` jobs under the current and the candidate policy, on the
        fleet as registered with every pool idle, so differences come from the policies."""
        _, current = await self._scheduler.current_policy()
        records = await self._dataplanes.list_dataplanes()
        pools = [pool for record in records for pool in record.pools]
        views = [DataplaneView(r.name, DataplaneHealth.HEALTHY, True, r.pools) for r in records]
        jobs = await self._jobs.list_jobs(limit=count)
        changes = []
        for job in jobs:
            demand = demand_from_json(job.id, job.spec)
            before = _route_text(demand, views, pools, current)
            after = _route_text(demand, views, pools, candidate)
            if before != after:
                changes.append(
                    admin_pb2.RoutingChange(
                        job_id=job.id,
                        project=job.project,
                        name=job.name,
                        before=before[0],
                        after=after[0],
                        why=after[1],
                    )
                )
        return len(jobs), changes


def _route_text(
    demand: JobDemand, views: list[DataplaneView], pools: list[PoolRecord], policy: Policy
) -> tuple[str, str]:
    """Where the job would go on an idle fleet under the policy, and why."""
    impossible = never_fits(demand, pools, policy)
    if impossible is not None:
        return f"rejected: {impossible}", impossible
    idle = CapacityLedger({pool.key: pool.gpus_per_job for pool in pools})
    decision = place(demand, views, idle, policy)
    if decision.placement is None:
        return decision.summary, decision.summary
    chosen = decision.candidates[0]
    return (
        f"{chosen.dataplane}/{chosen.pool}",
        f"rule {decision.rule}: {chosen.reason}",
    )


def _version(record: PolicyVersionRecord, with_document: bool = True) -> admin_pb2.PolicyVersion:
    return admin_pb2.PolicyVersion(
        version=record.version,
        author=record.author,
        created_at=timestamp(record.created_at),
        document=record.document if with_document else "",
        comment=record.comment,
    )
