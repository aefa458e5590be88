"""Rows to records, and the one place attempt and job rows change together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.domain.cordon import DRAINED_REASON
from control_plane.domain.phases import AttemptPhase, JobPhase, PurchaseType, job_after_attempt
from control_plane.domain.reconcile import AttemptChange
from control_plane.domain.records import AttemptRecord, EventRecord, JobRecord, PoolRecord
from control_plane.registry.tables import AttemptRow, JobEventRow, JobRow, PoolRow


def pool_record(row: PoolRow) -> PoolRecord:
    return PoolRecord(
        dataplane=row.dataplane,
        name=row.name,
        region=row.region,
        cloud=row.cloud,
        purchase_type=PurchaseType(row.purchase_type),
        gpu_model=row.gpu_model,
        gpu_memory_gb=row.gpu_memory_gb,
        gpu_total=row.gpu_total,
        gpu_free=row.gpu_free,
        interconnect=row.interconnect,
        price_per_gpu_hour=row.price_per_gpu_hour,
        labels=dict(row.labels),
        gpu_node_size=row.gpu_node_size,
        gpu_node_free=row.gpu_node_free,
    )


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


async def locked_jobs(session: AsyncSession, job_ids: Iterable[str]) -> dict[str, JobRow]:
    """The jobs of these ids, locked for update in one statement (in id order, so that
    two transactions locking overlapping sets never deadlock)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    rows = await session.scalars(
        sa.select(JobRow).where(JobRow.id.in_(ids)).order_by(JobRow.id).with_for_update()
    )
    return {row.id: row for row in rows}


async def apply_attempt_change(
    session: AsyncSession,
    attempt: AttemptRow,
    job: JobRow | None,
    change: AttemptChange,
    now: datetime,
) -> bool:
    """Record an attempt's new phase and move its job (`job`: the attempt's job, locked by
    the caller) if it is the job's current attempt.

    Returns whether the job changed. A fenced attempt (not the job's current one) is
    recorded for the history but never moves the job.
    """
    if AttemptPhase(attempt.phase).final:
        return False   # an ended attempt never changes again (whatever raced to report it)
    if change.phase is AttemptPhase.CANCELLED and attempt.preempt_reason is not None:
        # Stopped by the control plane to take the capacity away: a free retry elsewhere.
        change = replace(
            change, phase=AttemptPhase.PREEMPTED, reason=DRAINED_REASON,
            message=attempt.preempt_reason,
        )
    attempt.phase = change.phase.value
    attempt.reason = change.reason or attempt.reason
    attempt.message = change.message or attempt.message
    if change.exit_code is not None:
        attempt.exit_code = change.exit_code
    if change.phase is AttemptPhase.RUNNING or (change.phase.final and change.started_at):
        attempt.started_at = attempt.started_at or change.started_at or now
    if change.phase.final:
        attempt.finished_at = change.finished_at or now
    if change.outputs:
        attempt.outputs = change.outputs
    if job is None or job.current_attempt_id != attempt.id or job.epoch != attempt.epoch:
        return False
    detail = change.message or change.reason or change.phase.value
    step = job_after_attempt(
        JobPhase(job.phase), job.retries_used, job.retry_budget, change.phase, detail
    )
    if step is None:
        return False
    message = step.message
    if step.phase is JobPhase.FAILED:
        earlier = await session.scalars(
            sa.select(AttemptRow).where(AttemptRow.job_id == job.id, AttemptRow.id != attempt.id)
        )
        message += attempt_history([*earlier, attempt])
    job.phase = step.phase.value
    job.retries_used = step.retries_used
    job.message = message if step.phase is not JobPhase.RUNNING else ""
    job.updated_at = now
    if step.phase is JobPhase.RUNNING:
        job.started_at = job.started_at or attempt.started_at or now
    if step.phase.final:
        job.finished_at = now
    if step.phase is JobPhase.QUEUED:
        job.current_attempt_id = None
    add_event(session, job, step.event, message, now, attempt.id)
    return True


def attempt_history(attempts: list[AttemptRow]) -> str:
    """'; attempts: 1 lost on us-east (DataplaneLost), 2 failed on eu (exit code 3)' for a
    job that failed after retries; empty for a job that had one attempt."""
    if len(attempts) < 2:
        return ""
    parts = [
        f"{row.epoch} {row.phase} on {row.dataplane} ({row.message or row.reason or '-'})"
        for row in sorted(attempts, key=lambda a: a.epoch)
    ]
    return "; attempts: " + ", ".join(parts)
