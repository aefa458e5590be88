"""Jobs as users see them: submit (idempotent by client key), read, list, cancel, events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from control_plane.domain.phases import AttemptPhase, JobPhase
from control_plane.domain.records import AttemptRecord, EventRecord, JobRecord, NewJob
from control_plane.registry.attempt_states import JOB_EVENTS, JOBS, list_param
from control_plane.registry.database import Database
from control_plane.registry.group_commit import GroupCommit
from control_plane.registry.rows import add_event, attempt_record, event_record, job_record
from control_plane.registry.tables import AttemptRow, DataplaneRow, JobEventRow, JobRow

LIVE_ATTEMPT_PHASES = [p.value for p in AttemptPhase if not p.final]
LIVE_JOB_PHASES = [p.value for p in JobPhase if not p.final]


@dataclass(frozen=True)
class _Submission:
    """The jobs of one Submit or SubmitBatch call: stored together or not at all."""

    jobs: tuple[NewJob, ...]
    now: datetime


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._submits: GroupCommit[_Submission, list[tuple[JobRecord, bool]]] = GroupCommit(
            self._store_submissions, name="submits"
        )
        db.close_with(self._submits.close)

    async def submit(self, new: NewJob, now: datetime) -> tuple[JobRecord, bool]:
        """Store a job; returns (job, created). A known client key returns the stored job."""
        [result] = await self.submit_all([new], now)
        return result

    async def submit_all(
        self, news: Sequence[NewJob], now: datetime
    ) -> list[tuple[JobRecord, bool]]:
        """Store several jobs, all or none, in one transaction shared with the submits that
        arrive meanwhile (group commit); (job, created) for each, in order."""
        return await self._submits.write(_Submission(tuple(news), now))

    async def _store_submissions(
        self, submissions: Sequence[_Submission]
    ) -> list[list[tuple[JobRecord, bool]] | Exception]:
        # Nearly every client key is new (a key is sent again only when a client retries):
        # insert first, and look the keys up only when the unique index says one is known.
        try:
            return list(await self._store(submissions, look_up_keys=False))
        except IntegrityError:
            pass
        try:
            return list(await self._store(submissions, look_up_keys=True))
        except IntegrityError:
            # Another control plane stored a job with one of these client keys between our
            # read and our insert: read again (the keys now answer with its jobs).
            return list(await self._store(submissions, look_up_keys=True))

    async def _store(
        self, submissions: Sequence[_Submission], *, look_up_keys: bool
    ) -> list[list[tuple[JobRecord, bool]]]:
        keyed = (
            {(n.project, n.client_key) for s in submissions for n in s.jobs if n.client_key}
            if look_up_keys else set()
        )
        async with self._db.write() as session:
            known: dict[tuple[str, str | None], JobRecord] = {}
            if keyed:
                # Both columns of the unique index, then the exact pairs (no portable tuple IN).
                # (Core, ids only: the full rows are read for the keys found.)
                candidates = await session.execute(
                    _BY_KEYS,
                    {"projects": sorted({project for project, _ in keyed}),
                     "keys": sorted({str(key) for _, key in keyed})},
                )
                ids = [job_id for job_id, project, key in candidates if (project, key) in keyed]
                found = (
                    list(await session.scalars(sa.select(JobRow).where(JobRow.id.in_(ids))))
                    if ids else []
                )
                attempts: dict[str, list[AttemptRow]] = {}
                if found:
                    for attempt in await session.scalars(
                        sa.select(AttemptRow).where(AttemptRow.job_id.in_([r.id for r in found]))
                    ):
                        attempts.setdefault(attempt.job_id, []).append(attempt)
                for row in found:
                    known[(row.project, row.client_key)] = job_record(row, attempts.get(row.id))
            results: list[list[tuple[JobRecord, bool]]] = []
            jobs: list[dict[str, Any]] = []
            events: list[dict[str, object]] = []
            for submission in submissions:
                answers: list[tuple[JobRecord, bool]] = []
                for new in submission.jobs:
                    earlier = known.get((new.project, new.client_key)) if new.client_key else None
                    if earlier is not None:
                        answers.append((earlier, False))
                        continue
                    values = _job_values(new, submission.now)
                    jobs.append(values)
                    events.append(
                        {"job_id": new.id, "at": submission.now, "phase": JobPhase.QUEUED.value,
                         "attempt_id": None, "kind": "submitted", "message": ""}
                    )
                    record = _queued_record(values)
                    if new.client_key:   # the same key twice in one batch: one job
                        known[(new.project, new.client_key)] = record
                    answers.append((record, True))
                results.append(answers)
            if jobs:
                await session.execute(_INSERT_JOBS, jobs)
                await session.execute(_INSERT_EVENTS, events)
        return results

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.read() as session:
            row = await session.get(JobRow, job_id)
            if row is None:
                return None
            attempts = await session.scalars(
                sa.select(AttemptRow).where(AttemptRow.job_id == job_id)
            )
            return job_record(row, list(attempts))

    async def list_jobs(
        self,
        *,
        project: str = "",
        projects: Sequence[str] | None = None,
        phases: Sequence[JobPhase] = (),
        dataplane: str = "",
        limit: int = 100,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobRecord]:
        """Newest first; `after` is the (created_at, id) of the previous page's last job.
        `projects` (a key's scope) limits the list to those projects; None: every one."""
        query = sa.select(JobRow)
        if project:
            query = query.where(JobRow.project == project)
        if projects is not None:
            query = query.where(JobRow.project.in_(list(projects)))
        if phases:
            query = query.where(JobRow.phase.in_([p.value for p in phases]))
        if dataplane:
            query = query.where(JobRow.dataplane == dataplane)
        if after is not None:
            query = query.where(
                sa.or_(
                    JobRow.created_at < after[0],
                    sa.and_(JobRow.created_at == after[0], JobRow.id < after[1]),
                )
            )
        query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
        async with self._db.read() as session:
            return [job_record(row) for row in await session.scalars(query)]

    async def cancel(
        self, job_id: str, reason: str, now: datetime
    ) -> tuple[JobRecord | None, list[AttemptRecord]]:
        """Cancel a job that has not ended; returns the job and its live attempts to stop.

        Cancelling an ended job changes nothing (and returns it as it is).
        """
        async with self._db.write() as session:
            # Lock order as in a report (dataplane, then attempts and job), so that a cancel
            # and an agent's report of the same attempt never deadlock on Postgres.
            placed_on = await session.scalars(
                sa.select(AttemptRow.dataplane).where(
                    AttemptRow.job_id == job_id, AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES)
                )
            )
            for dataplane in sorted(set(placed_on)):
                await session.get(DataplaneRow, dataplane, with_for_update=True)
            job = await session.get(JobRow, job_id, with_for_update=True)
            if job is None:
                return None, []
            live: list[AttemptRow] = []
            if not JobPhase(job.phase).final:
                job.phase = JobPhase.CANCELLED.value
                job.message = reason or "cancelled by the user"
                job.updated_at = now
                job.finished_at = now
                live = list(
                    await session.scalars(
                        sa.select(AttemptRow).where(
                            AttemptRow.job_id == job_id,
                            AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                        )
                    )
                )
                for attempt in live:
                    attempt.cancel_requested = True
                add_event(session, job, "cancelled", job.message, now)
            attempts = await session.scalars(
                sa.select(AttemptRow).where(AttemptRow.job_id == job_id)
            )
            return job_record(job, list(attempts)), [attempt_record(a) for a in live]

    async def events_after(self, job_id: str, seq: int, limit: int = 500) -> list[EventRecord]:
        query = (
            sa.select(JobEventRow)
            .where(JobEventRow.job_id == job_id, JobEventRow.seq > seq)
            .order_by(JobEventRow.seq)
            .limit(limit)
        )
        async with self._db.read() as session:
            return [event_record(row) for row in await session.scalars(query)]

    async def by_client_key(self, project: str, client_key: str) -> JobRecord | None:
        async with self._db.read() as session:
            row = await session.scalar(
                sa.select(JobRow).where(JobRow.project == project, JobRow.client_key == client_key)
            )
            if row is None:
                return None
        return await self.get(row.id)


_BY_KEYS = sa.select(JOBS.c.id, JOBS.c.project, JOBS.c.client_key).where(
    JOBS.c.project.in_(list_param("projects")), JOBS.c.client_key.in_(list_param("keys"))
)
_INSERT_JOBS = sa.insert(JOBS)
_INSERT_EVENTS = sa.insert(JOB_EVENTS)


def _job_values(new: NewJob, now: datetime) -> dict[str, Any]:
    return {
        "id": new.id,
        "client_key": new.client_key or None,
        "project": new.project,
        "domain": new.domain,
        "name": new.name,
        "spec": dict(new.spec),
        "phase": JobPhase.QUEUED.value,
        "message": "waiting for the scheduler",
        "priority": new.priority,
        "epoch": 0,
        "retries_used": 0,
        "retry_budget": new.retry_budget,
        "current_attempt_id": None,
        "dataplane": None,
        "pool": None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "submitted_by": new.submitted_by,
    }


def _queued_record(values: dict[str, Any]) -> JobRecord:
    """The record of a job just stored, without reading it back (nor making a row of it:
    the columns are the record's fields)."""
    return JobRecord(**{**values, "phase": JobPhase.QUEUED})
