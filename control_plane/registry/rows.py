"""Rows to records, and the one place attempt and job rows change together."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.domain.phases import AttemptPhase, JobPhase
from control_plane.domain.records import AttemptRecord, EventRecord, JobRecord
from control_plane.registry.tables import AttemptRow, JobEventRow, JobRow


def attempt_record(row: AttemptRow) -> AttemptRecord:
    return AttemptRecord(
        id=row.id,
        job_id=row.job_id,
        epoch=row.epoch,
        dataplane=row.dataplane,
        pool=row.pool,
        gpus=row.gpus,
        phase=AttemptPhase(row.phase),
        reason=row.reason,
        message=row.message,
        exit_code=row.exit_code,
        cancel_requested=row.cancel_requested,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outputs=row.outputs,
    )


def job_record(row: JobRow, attempts: list[AttemptRow] | None = None) -> JobRecord:
    return JobRecord(
        id=row.id,
        client_key=row.client_key,
        project=row.project,
        domain=row.domain,
        name=row.name,
        spec=dict(row.spec),
        phase=JobPhase(row.phase),
        message=row.message,
        priority=row.priority,
        epoch=row.epoch,
        retries_used=row.retries_used,
        retry_budget=row.retry_budget,
        current_attempt_id=row.current_attempt_id,
        dataplane=row.dataplane,
        pool=row.pool,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=tuple(attempt_record(a) for a in sorted(attempts or [], key=lambda a: a.epoch)),
        submitted_by=row.submitted_by,
    )


def event_record(row: JobEventRow) -> EventRecord:
    return EventRecord(
        seq=row.seq,
        job_id=row.job_id,
        at=row.at,
        phase=JobPhase(row.phase),
        attempt_id=row.attempt_id,
        kind=row.kind,
        message=row.message,
    )


def add_event(
    session: AsyncSession,
    job: JobRow,
    kind: str,
    message: str,
    now: datetime,
    attempt_id: str | None = None,
) -> None:
    session.add(
        JobEventRow(
            job_id=job.id,
            at=now,
            phase=job.phase,
            attempt_id=attempt_id,
            kind=kind,
            message=message,
        )
    )
