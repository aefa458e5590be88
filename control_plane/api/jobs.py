"""JobService: what users, the CLI and the Flyte connector call."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import grpc
from fleet.v1 import jobs_pb2, jobs_pb2_grpc, types_pb2

from control_plane.api.access import Access
from control_plane.api.errors import Context, refuse
from control_plane.api.validation import (
    DEFAULT_DOMAIN,
    DEFAULT_RETRY_BUDGET,
    cancel_problems,
    check,
    id_problem,
    list_problems,
    logs_problems,
    spec_problems,
    watch_problems,
)
from control_plane.clock import Clock
from control_plane.domain.access import Action, Principal
from control_plane.domain.limits import MAX_PAGE, MAX_SUBMIT_BATCH
from control_plane.domain.phases import JobPhase
from control_plane.domain.records import JobRecord, NewJob
from control_plane.metrics import ControlPlaneMetrics
from control_plane.registry import DataplaneStore, JobStore
from control_plane.relay import RELAYED_HEADER, Relay
from control_plane.scheduler import Scheduler, Wake
from control_plane.sessions import SessionHub
from control_plane.wire import (
    cancel_message,
    decode_page_token,
    demand_from_json,
    encode_page_token,
    enum_from_proto,
    event_to_proto,
    job_to_proto,
    spec_to_json,
)

DEFAULT_PAGE = 100
DEFAULT_LOG_TAIL = 1 << 20
LOG_CHUNK_TIMEOUT_S = 30.0


class JobService(jobs_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        jobs: JobStore,
        dataplanes: DataplaneStore,
        scheduler: Scheduler,
        hub: SessionHub,
        clock: Clock,
        access: Access,
        relay: Relay | None = None,
        metrics: ControlPlaneMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._access = access
        self._relay = relay
        self._jobs = jobs
        self._dataplanes = dataplanes
        self._scheduler = scheduler
        self._hub = hub
        self._clock = clock

    async def Submit(
        self, request: jobs_pb2.SubmitRequest, context: Context
    ) -> jobs_pb2.SubmitResponse:
        caller = await self._access.caller(context)
        new, spec = await self._admit(request, caller, context)
        [(job, created)] = await self._jobs.submit_all([new], self._clock.now())
        if created:
            self._accepted(1)
        return jobs_pb2.SubmitResponse(
            job=job_to_proto(job, spec if created else None), created=created
        )

    async def SubmitBatch(
        self, request: jobs_pb2.SubmitBatchRequest, context: Context
    ) -> jobs_pb2.SubmitBatchResponse:
        caller = await self._access.caller(context)
        if not 1 <= len(request.jobs) <= MAX_SUBMIT_BATCH:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"jobs: {len(request.jobs)} jobs; a batch has 1 to {MAX_SUBMIT_BATCH}",
            )
        admitted = [
            await self._admit(submit, caller, context, f"jobs[{i}]")
            for i, submit in enumerate(request.jobs)
        ]
        stored = await self._jobs.submit_all([new for new, _ in admitted], self._clock.now())
        self._accepted(sum(created for _, created in stored))
        return jobs_pb2.SubmitBatchResponse(
            jobs=[
                jobs_pb2.SubmitResponse(job=job_to_proto(job, spec if created else None),
                                        created=created)
                for (job, created), (_, spec) in zip(stored, admitted, strict=True)
            ]
        )

    def _accepted(self, count: int) -> None:
        if count:
            self._scheduler.wake(Wake.NEW_JOBS)
            if self._metrics is not None:
                self._metrics.submitted(count)

    async def _admit(
        self,
        request: jobs_pb2.SubmitRequest,
        caller: Principal,
        context: Context,
        where: str = "",
    ) -> tuple[NewJob, types_pb2.JobSpec]:
        """The job to store for one submit, and its spec as stored, or the call refused
        (nothing stored). `where` names the submit in a batch (jobs[3]) in every refusal."""
        path, at = (where + ".", where + ": ") if where else ("", "")
        spec = types_pb2.JobSpec()
        spec.CopyFrom(request.spec)
        problems = spec_problems(spec, request.client_key)
        if problems:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid job: " + "; ".join(path + problem for problem in problems),
            )
        if not caller.may(Action.SUBMIT, spec.project):
            await refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                at + caller.denial(Action.SUBMIT, spec.project),
            )
        spec.domain = spec.domain or DEFAULT_DOMAIN
        new = _new_job(spec, request.client_key, caller.describe())
        impossible = await self._scheduler.never_fits(demand_from_json(new.id, new.spec))
        # Already stored under its key (before the fleet changed): a retry still gets it.
        if impossible is not None and not (
            request.client_key
            and await self._jobs.by_client_key(spec.project, request.client_key) is not None
        ):
            await refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{at}no dataplane can ever run this job: {impossible}",
            )
        return new, spec

    async def Get(self, request: jobs_pb2.GetJobRequest, context: Context) -> types_pb2.Job:
        await check(context, [id_problem("job_id", request.job_id)])
        return job_to_proto(await self._job(request.job_id, context, Action.READ))

    async def List(
        self, request: jobs_pb2.ListJobsRequest, context: Context
    ) -> jobs_pb2.ListJobsResponse:
        caller = await self._access.require(context, Action.READ, request.project)
        await check(context, list_problems(request))
        try:
            phases = [enum_from_proto(JobPhase, p) for p in request.phases]
        except ValueError as exc:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"phases: {exc}")
        if request.page_size > MAX_PAGE:
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size: {request.page_size} is more than {MAX_PAGE}",
            )
        size = request.page_size or DEFAULT_PAGE
        after = None
        if request.page_token:
            after = decode_page_token(request.page_token)
            if after is None:
                await refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "page_token: not a token this service returned",
                )
        jobs = await self._jobs.list_jobs(
            project=request.project,
            projects=None if caller.all_projects else sorted(caller.projects),
            phases=phases,
            dataplane=request.dataplane,
            limit=size + 1,
            after=after,
        )
        token = encode_page_token(jobs[size - 1]) if len(jobs) > size else ""
        return jobs_pb2.ListJobsResponse(
            jobs=[job_to_proto(j) for j in jobs[:size]], next_page_token=token
        )

    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: Context) -> types_pb2.Job:
        await check(context, cancel_problems(request))
        caller = await self._access.caller(context)
        target = await self._job(request.job_id, context, Action.CANCEL, caller)
        job, live = await self._jobs.cancel(request.job_id, request.reason, self._clock.now())
        if job is None:
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"job_id: no job {request.job_id!r}")
        if live and target.submitted_by != caller.describe():
            await self._access.audit(
                caller, "job.cancel", job.id,
                f"project {job.project}, submitted by {target.submitted_by or 'unknown'}: "
                f"{request.reason or 'no reason given'}",
            )
        for attempt in live:
            self._hub.send(attempt.dataplane, cancel_message(attempt.id, "cancelled by the user"))
        self._hub.notify_jobs([job.id])
        return job_to_proto(job)

    async def Watch(
        self, request: jobs_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[types_pb2.JobEvent]:
        await check(context, watch_problems(request))
        job = await self._job(request.job_id, context, Action.READ)
        seq = request.after_seq
        final = job.phase.final
        while True:
            events = await self._jobs.events_after(job.id, seq)
            for event in events:
                yield event_to_proto(event)
                seq = event.seq
                final = final or event.phase.final
            if not events:
                if final:
                    return
                await self._hub.wait_for_job(job.id, 1.0)
                current = await self._jobs.get(job.id)
                final = current is not None and current.phase.final

    async def Logs(
        self, request: jobs_pb2.JobLogsRequest, context: Context
    ) -> AsyncIterator[types_pb2.LogChunk]:
        await check(context, logs_problems(request))
        job = await self._job(request.job_id, context, Action.READ)
        attempts = [a for a in job.attempts if not request.attempt_id or a.id == request.attempt_id]
        if not attempts:
            what = f"attempt {request.attempt_id!r}" if request.attempt_id else "any attempt yet"
            await refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"job {job.id} has no {what}"
            )
        attempt = attempts[-1]
        relay = self._hub.request_log(
            attempt.dataplane, attempt.id, request.tail_bytes or DEFAULT_LOG_TAIL
        )
        if relay is None and not _relayed(context) and self._relay is not None:
            address = await self._relay.holder(attempt.dataplane)
            if address is not None:   # another replica holds the stream: ask it
                try:
                    async for chunk in self._relay.logs(address, request):
                        yield chunk
                except grpc.aio.AioRpcError as error:
                    await refuse(context, error.code(), error.details() or "log relay failed")
                return
        if relay is None:
            await refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"dataplane {attempt.dataplane} is not connected; the log of "
                f"{attempt.id} stays in its region until it reconnects",
            )
        request_id, chunks = relay
        try:
            while True:
                try:
                    async with asyncio.timeout(LOG_CHUNK_TIMEOUT_S):  # see Scheduler.run
                        chunk = await chunks.get()
                except TimeoutError:
                    await refuse(
                        context,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"dataplane {attempt.dataplane} did not send the log in time",
                    )
                if chunk.error:
                    await refuse(
                        context, grpc.StatusCode.NOT_FOUND, f"log of {attempt.id}: {chunk.error}"
                    )
                yield types_pb2.LogChunk(data=chunk.data, eof=chunk.eof)
                if chunk.eof:
                    return
        finally:
            self._hub.end_log_request(request_id)

    async def _job(
        self, job_id: str, context: Context, action: Action, caller: Principal | None = None
    ) -> JobRecord:
        """The job, if the caller may act on it; a job of a project the caller's key does
        not cover answers NOT_FOUND, like a missing one (its existence is not for them).
        A caller already authenticated is passed in: a call is counted once per key."""
        caller = caller or await self._access.caller(context)
        if not job_id:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "job_id: required")
        job = await self._jobs.get(job_id)
        if job is None or not caller.may(action, job.project):
            if job is not None and caller.may(Action.READ, job.project):
                await refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                             caller.denial(action, job.project))
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"job_id: no job {job_id!r}")
        return job


def _new_job(spec: types_pb2.JobSpec, client_key: str, submitted_by: str) -> NewJob:
    return NewJob(
        id="j-" + secrets.token_hex(6),
        client_key=client_key or None,
        project=spec.project,
        domain=spec.domain,
        name=spec.name,
        spec=spec_to_json(spec),
        priority=spec.priority,
        retry_budget=spec.retry_budget if spec.HasField("retry_budget") else DEFAULT_RETRY_BUDGET,
        submitted_by=submitted_by,
    )


def _relayed(context: Context) -> bool:
    """A Logs call another replica forwarded here: answer from this replica's streams."""
    return any(key == RELAYED_HEADER for key, _ in context.invocation_metadata() or ())
