"""A fake control plane (JobService, AdminService, PolicyService) on a real gRPC server.

It records what the client sent and plays back what a test scripted: the events of each
submitted job (the job's phase follows the events Watch has sent), status codes to fail
with, log chunks, dataplanes, a dry run's changes and an explanation. Policy versions are
kept like the real server keeps them: every apply and rollback adds one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

CREATED_AT = Timestamp(seconds=1_767_225_600)  # 2026-01-01T00:00:00Z


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str


@dataclass
class FakeFleet(
    jobs_pb2_grpc.JobServiceServicer,
    admin_pb2_grpc.AdminServiceServicer,
    admin_pb2_grpc.PolicyServiceServicer,
):
    address: str = ""
    # What the client sent.
    submits: list[jobs_pb2.SubmitRequest] = field(default_factory=list)
    list_requests: list[jobs_pb2.ListJobsRequest] = field(default_factory=list)
    cancels: list[jobs_pb2.CancelJobRequest] = field(default_factory=list)
    watches: list[jobs_pb2.WatchJobRequest] = field(default_factory=list)
    log_requests: list[jobs_pb2.JobLogsRequest] = field(default_factory=list)
    # What the server plays back.
    jobs: dict[str, types_pb2.Job] = field(default_factory=dict)
    events: dict[str, list[types_pb2.JobEvent]] = field(default_factory=dict)
    # Events every submitted job will go through: (kind, phase, dataplane or "").
    script: list[tuple[str, types_pb2.JobPhase.ValueType, str]] = field(default_factory=list)
    dataplane_of_attempt: dict[str, str] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)  # RPC name -> status
    # The first Watch call sends this many events, then breaks (UNAVAILABLE) or ends.
    break_watch_after: int | None = None
    end_watch_after: int | None = None
    # A Watch with no more events to send blocks on this instead of ending.
    hold_watch: threading.Event | None = None
    page_size_default: int = 100
    max_page_size: int = 1000
    log_chunks: list[types_pb2.LogChunk] = field(default_factory=list)
    dataplanes: list[admin_pb2.Dataplane] = field(default_factory=list)
    # Cordon, drain and uncordon requests, in order.
    dataplane_changes: list[object] = field(default_factory=list)
    # PolicyService: what the client sent ...
    applies: list[admin_pb2.ApplyPolicyRequest] = field(default_factory=list)
    policy_gets: list[admin_pb2.GetPolicyRequest] = field(default_factory=list)
    rollbacks: list[admin_pb2.RollbackPolicyRequest] = field(default_factory=list)
    explain_jobs: list[admin_pb2.ExplainJobRequest] = field(default_factory=list)
    explain_placements: list[admin_pb2.ExplainPlacementRequest] = field(default_factory=list)
    # ... and what it plays back. Versions oldest first; the last one is in force.
    policy_versions: list[admin_pb2.PolicyVersion] = field(default_factory=list)
    dry_run_replayed: int = 0
    dry_run_changes: list[admin_pb2.RoutingChange] = field(default_factory=list)
    explanation: admin_pb2.Explanation = field(default_factory=admin_pb2.Explanation)

    def _fail_if_scripted(self, rpc: str, context: grpc.ServicerContext) -> None:
        failure = self.failures.get(rpc)
        if failure is not None:
            context.abort(failure.code, failure.message)

    def add_job(self, job: types_pb2.Job, events: Sequence[types_pb2.JobEvent] = ()) -> None:
        self.jobs[job.id] = job
        self.events[job.id] = list(events)

    def _job(self, job_id: str, context: grpc.ServicerContext) -> types_pb2.Job:
        job = self.jobs.get(job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found")
        return job

    # -- JobService --

    def Submit(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("Submit", context)
        self.submits.append(request)
        job_id = f"job-{len(self.submits)}"
        job = types_pb2.Job(
            id=job_id,
            client_key=request.client_key,
            spec=request.spec,
            phase=types_pb2.JOB_PHASE_QUEUED,
            message="waiting for capacity",
            retry_budget=request.spec.retry_budget if request.spec.HasField("retry_budget") else 2,
            created_at=CREATED_AT,
        )
        events = [
            types_pb2.JobEvent(
                seq=seq,
                job_id=job_id,
                at=Timestamp(seconds=CREATED_AT.seconds + seq),
                phase=phase,
                attempt_id=f"{job_id}-a1" if dataplane else "",
                kind=kind,
                message=f"on {dataplane}" if dataplane else "",
            )
            for seq, (kind, phase, dataplane) in enumerate(self.script, start=1)
        ]
        self.add_job(job, events)
        for event, (_, _, dataplane) in zip(events, self.script, strict=True):
            if dataplane:
                self.dataplane_of_attempt[event.attempt_id] = dataplane
        return jobs_pb2.SubmitResponse(job=job, created=True)

    def Get(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("Get", context)
        return self._job(request.job_id, context)

    def List(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("List", context)
        self.list_requests.append(request)
        matching = [
            job
            for job in self.jobs.values()
            if (not request.project or job.spec.project == request.project)
            and (not request.phases or job.phase in request.phases)
            and (not request.dataplane or job.dataplane == request.dataplane)
        ]
        start = int(request.page_token or 0)
        end = start + min(request.page_size or self.page_size_default, self.max_page_size)
        return jobs_pb2.ListJobsResponse(
            jobs=matching[start:end], next_page_token=str(end) if end < len(matching) else ""
        )

    def Cancel(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("Cancel", context)
        self.cancels.append(request)
        job = self._job(request.job_id, context)
        job.phase = types_pb2.JOB_PHASE_CANCELLED
        job.message = request.reason
        return job

    def Watch(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("Watch", context)
        self.watches.append(request)
        first_call = len(self.watches) == 1
        sent = 0
        for event in self.events.get(request.job_id, []):
            if event.seq <= request.after_seq:
                continue
            if first_call and sent == self.break_watch_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "control plane restarting")
            if first_call and sent == self.end_watch_after:
                return
            job = self.jobs[request.job_id]
            job.phase = event.phase
            if event.attempt_id:
                job.dataplane = self.dataplane_of_attempt.get(event.attempt_id, "")
                job.pool = "h100"
            yield event
            sent += 1
        if self.hold_watch is not None:
            self.hold_watch.wait()

    def Logs(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("Logs", context)
        self.log_requests.append(request)
        yield from self.log_chunks

    # -- AdminService --

    def ListDataplanes(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("ListDataplanes", context)
        return admin_pb2.ListDataplanesResponse(dataplanes=self.dataplanes)

    def _change_dataplane(self, request, context, state, deadline=None):  # type: ignore[no-untyped-def]
        self.dataplane_changes.append(request)
        for dataplane in self.dataplanes:
            if dataplane.name == request.name:
                dataplane.state = state
                dataplane.cordon_reason = getattr(request, "reason", "")
                if deadline is not None:
                    dataplane.drain_deadline.CopyFrom(deadline)
                return dataplane
        context.abort(grpc.StatusCode.NOT_FOUND, f"name: no dataplane named {request.name!r}")

    def CordonDataplane(self, request, context):  # type: ignore[no-untyped-def]
        return self._change_dataplane(request, context, admin_pb2.DATAPLANE_STATE_CORDONED)

    def DrainDataplane(self, request, context):  # type: ignore[no-untyped-def]
        deadline = Timestamp()
        deadline.GetCurrentTime()
        deadline.seconds += request.deadline.seconds
        return self._change_dataplane(
            request, context, admin_pb2.DATAPLANE_STATE_DRAINING, deadline
        )

    def UncordonDataplane(self, request, context):  # type: ignore[no-untyped-def]
        return self._change_dataplane(request, context, admin_pb2.DATAPLANE_STATE_ACTIVE)

    # -- PolicyService --

    def add_policy_version(
        self, document: str, author: str = "", comment: str = ""
    ) -> admin_pb2.PolicyVersion:
        number = len(self.policy_versions) + 1
        version = admin_pb2.PolicyVersion(
            version=number,
            author=author,
            comment=comment,
            document=document,
            created_at=Timestamp(seconds=CREATED_AT.seconds + 3600 * number),
        )
        self.policy_versions.append(version)
        return version

    def _policy_version(
        self, number: int, context: grpc.ServicerContext
    ) -> admin_pb2.PolicyVersion:
        if number == 0 and self.policy_versions:
            return self.policy_versions[-1]
        for version in self.policy_versions:
            if version.version == number:
                return version
        context.abort(grpc.StatusCode.NOT_FOUND, f"policy version {number} not found")

    def ApplyPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("ApplyPolicy", context)
        self.applies.append(request)
        if request.dry_run:
            return admin_pb2.ApplyPolicyResponse(
                replayed=self.dry_run_replayed, changes=self.dry_run_changes
            )
        applied = self.add_policy_version(request.document, request.author, request.comment)
        return admin_pb2.ApplyPolicyResponse(applied=applied)

    def GetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("GetPolicy", context)
        self.policy_gets.append(request)
        return self._policy_version(request.version, context)

    def ListPolicyVersions(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("ListPolicyVersions", context)
        versions = []
        for version in reversed(self.policy_versions):
            listed = admin_pb2.PolicyVersion()
            listed.CopyFrom(version)
            listed.ClearField("document")
            versions.append(listed)
        current = self.policy_versions[-1].version if self.policy_versions else 0
        return admin_pb2.ListPolicyVersionsResponse(versions=versions, current=current)

    def RollbackPolicy(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("RollbackPolicy", context)
        self.rollbacks.append(request)
        old = self._policy_version(request.version, context)
        comment = f"rollback to version {request.version}"
        return self.add_policy_version(old.document, request.author, comment)

    def ExplainJob(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("ExplainJob", context)
        self.explain_jobs.append(request)
        self._job(request.job_id, context)
        explanation = admin_pb2.Explanation()
        explanation.CopyFrom(self.explanation)
        explanation.job_id = request.job_id
        return explanation

    def ExplainPlacement(self, request, context):  # type: ignore[no-untyped-def]
        self._fail_if_scripted("ExplainPlacement", context)
        self.explain_placements.append(request)
        return self.explanation
