"""Attempts and their jobs as agent reports and the lost timer change them.

This is the control plane's hottest write path (every attempt update of every agent), so
it uses SQLAlchemy Core, not the ORM: the rows are read into plain states with one
statement per table, changed in memory, and written back with one executemany per table
(and one insert for all the job events). The rules of a change are in
`apply_attempt_change`; the phases it moves through are `domain.phases`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.domain.cordon import DRAINED_REASON
from control_plane.domain.phases import AttemptPhase, JobPhase, job_after_attempt
from control_plane.domain.reconcile import AttemptChange
from control_plane.domain.records import AttemptRecord
from control_plane.registry.tables import AttemptRow, JobEventRow, JobRow

# The Core tables: inserts and executemany updates on them skip the ORM's bulk machinery.
ATTEMPTS = cast(sa.Table, AttemptRow.__table__)
JOBS = cast(sa.Table, JobRow.__table__)
JOB_EVENTS = cast(sa.Table, JobEventRow.__table__)


@dataclass(slots=True)
class AttemptState:
    """An attempt row, read to be changed (columns as in tables.AttemptRow)."""

    id: str
    job_id: str
    epoch: int
    dataplane: str
    pool: str
    gpus: int
    phase: str
    reason: str
    message: str
    exit_code: int | None
    cancel_requested: bool
    preempt_reason: str | None
    counted_in_pool: bool
    outputs: bytes | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dirty: bool = False

    def record(self) -> AttemptRecord:
        return AttemptRecord(
            id=self.id, job_id=self.job_id, epoch=self.epoch, dataplane=self.dataplane,
            pool=self.pool, gpus=self.gpus, phase=AttemptPhase(self.phase), reason=self.reason,
            message=self.message, exit_code=self.exit_code,
            cancel_requested=self.cancel_requested, created_at=self.created_at,
            started_at=self.started_at, finished_at=self.finished_at, outputs=self.outputs,
        )


@dataclass(slots=True)
class JobState:
    """What an attempt's end changes of its job (the spec is not read)."""

    id: str
    phase: str
    epoch: int
    current_attempt_id: str | None
    retries_used: int
    retry_budget: int
    message: str
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    dirty: bool = False


_ATTEMPT_COLUMNS = [f.name for f in fields(AttemptState) if f.name != "dirty"]
_JOB_COLUMNS = [f.name for f in fields(JobState) if f.name != "dirty"]
# What a change may write (the rest is fixed when the attempt or job is created).
_ATTEMPT_WRITES = ["phase", "reason", "message", "exit_code", "cancel_requested",
                   "preempt_reason", "counted_in_pool", "outputs", "started_at", "finished_at"]
_JOB_WRITES = ["phase", "current_attempt_id", "retries_used", "message", "started_at",
               "finished_at", "updated_at"]


def select_attempts(where: sa.ColumnElement[bool], *, lock: bool = False) -> sa.Select[Any]:
    """The query of read_attempts. Hot paths build theirs once, at import, with bound
    parameters: building a statement and its cache key costs more than running it."""
    query = sa.select(*(ATTEMPTS.c[name] for name in _ATTEMPT_COLUMNS)).where(where)
    if lock:
        query = query.order_by(ATTEMPTS.c.id).with_for_update()
    return query


async def read_attempts(
    session: AsyncSession, query: sa.Select[Any], params: dict[str, Any] | None = None
) -> list[AttemptState]:
    """The attempts of a select_attempts query."""
    return [AttemptState(*row) for row in await session.execute(query, params)]


def list_param(name: str) -> sa.BindParameter[Any]:
    """A list parameter for IN (expanding: one cached statement whatever the length)."""
    return sa.bindparam(name, expanding=True)


_LOCK_JOBS = (
    sa.select(*(JOBS.c[name] for name in _JOB_COLUMNS))
    .where(JOBS.c.id.in_(list_param("ids")))
    .order_by(JOBS.c.id)
    .with_for_update()
)


async def lock_jobs(session: AsyncSession, job_ids: Iterable[str]) -> dict[str, JobState]:
    """The jobs of these ids, locked for update in one statement (in id order, so that two
    transactions locking overlapping sets never deadlock)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    return {row[0]: JobState(*row) for row in await session.execute(_LOCK_JOBS, {"ids": ids})}


def _update_by_id(table: sa.Table, columns: list[str]) -> sa.Update:
    return (
        sa.update(table)
        .where(table.c.id == sa.bindparam("key"))
        .values({name: sa.bindparam(name) for name in columns})
    )


_UPDATE_ATTEMPTS = _update_by_id(ATTEMPTS, _ATTEMPT_WRITES)
_UPDATE_JOBS = _update_by_id(JOBS, _JOB_WRITES)
_INSERT_EVENTS = sa.insert(JOB_EVENTS)


async def write_changes(
    session: AsyncSession,
    attempts: Iterable[AttemptState],
    jobs: Iterable[JobState],
    events: Sequence[dict[str, Any]],
) -> None:
    """Write back what changed: one executemany per table, one insert of the events."""
    await _write(session, _UPDATE_ATTEMPTS, _ATTEMPT_WRITES, [a for a in attempts if a.dirty])
    await _write(session, _UPDATE_JOBS, _JOB_WRITES, [j for j in jobs if j.dirty])
    if events:
        await session.execute(_INSERT_EVENTS, list(events))


async def _write(
    session: AsyncSession, statement: sa.Update, columns: list[str], states: Sequence[Any]
) -> None:
    if states:
        await session.execute(
            statement,
            [{"key": state.id, **{name: getattr(state, name) for name in columns}}
             for state in states],
        )


def job_event(
    job: JobState, kind: str, message: str, now: datetime, attempt_id: str | None
) -> dict[str, Any]:
    return {"job_id": job.id, "at": now, "phase": job.phase, "attempt_id": attempt_id,
            "kind": kind, "message": message}


async def apply_attempt_change(
    session: AsyncSession,
    attempt: AttemptState,
    job: JobState | None,
    change: AttemptChange,
    now: datetime,
    events: list[dict[str, Any]],
) -> bool:
    """Record an attempt's new phase and move its job (`job`: the attempt's job, locked by
    the caller) if it is the job's current attempt; the job's event goes to `events`.

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
    attempt.dirty = True
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
        earlier = await read_attempts(
            session,
            select_attempts(sa.and_(ATTEMPTS.c.job_id == job.id, ATTEMPTS.c.id != attempt.id)),
        )
        message += attempt_history([*earlier, attempt])
    job.dirty = True
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
    events.append(job_event(job, step.event, message, now, attempt.id))
    return True


def attempt_history(attempts: list[AttemptState]) -> str:
    """'; attempts: 1 lost on us-east (DataplaneLost), 2 failed on eu (exit code 3)' for a
    job that failed after retries; empty for a job that had one attempt."""
    if len(attempts) < 2:
        return ""
    parts = [
        f"{state.epoch} {state.phase} on {state.dataplane} ({state.message or state.reason or '-'})"
        for state in sorted(attempts, key=lambda a: a.epoch)
    ]
    return "; attempts: " + ", ".join(parts)
