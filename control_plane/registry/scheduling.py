"""What the scheduler reads and the one transaction in which it applies a plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from control_plane.domain.phases import AttemptPhase, JobPhase
from control_plane.domain.placement import PoolKey
from control_plane.domain.records import AttemptRecord
from control_plane.domain.usage import AttemptSpan, day_start
from control_plane.registry.database import Database
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.rows import add_event, attempt_record
from control_plane.registry.tables import AttemptRow, JobRow, PoolRow


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    spec: dict[str, Any]  # the JobSpec as protobuf JSON
    priority: int  # the job's own priority (the policy's rule priority comes first)
    created_at: datetime
    message: str


@dataclass(frozen=True)
class PlacementOrder:
    job_id: str
    dataplane: str
    pool: str
    gpus: int
    why: str


class SchedulingStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def queued(self, limit: int) -> list[QueuedJob]:
        """Queued jobs, the job's own priority first, then in submit order (the scheduler
        orders each batch by the policy's rule priority)."""
        query = (
            sa.select(JobRow)
            .where(JobRow.phase == JobPhase.QUEUED.value)
            .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
            .limit(limit)
        )
        async with self._db.read() as session:
            return [
                QueuedJob(row.id, dict(row.spec), row.priority, row.created_at, row.message)
                for row in await session.scalars(query)
            ]

    async def attempt_spans(self, now: datetime) -> list[AttemptSpan]:
        """Attempts that hold GPUs now or ran today, with their job's project (for quotas)."""
        query = (
            sa.select(
                JobRow.project,
                AttemptRow.gpus,
                AttemptRow.phase,
                AttemptRow.started_at,
                AttemptRow.finished_at,
            )
            .join(JobRow, JobRow.id == AttemptRow.job_id)
            .where(
                AttemptRow.gpus > 0,
                sa.or_(
                    AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                    AttemptRow.finished_at >= day_start(now),
                ),
            )
        )
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        return [
            AttemptSpan(project, gpus, phase in LIVE_ATTEMPT_PHASES, started, finished)
            for project, gpus, phase, started, finished in rows
        ]

    async def capacity(self) -> tuple[dict[PoolKey, int], dict[PoolKey, int]]:
        """Each pool's reported free GPUs and its holds, read in ONE statement (one snapshot).

        A hold is the GPUs of live attempts that no heartbeat has counted in the pool's free
        GPUs yet: an attempt update between heartbeats moves an attempt out of PENDING, but
        the pool's free count changes only with the next heartbeat, which also marks the
        attempt counted, in the same transaction.
        """
        held = (
            sa.select(
                AttemptRow.dataplane,
                AttemptRow.pool,
                sa.func.sum(AttemptRow.gpus).label("gpus"),
            )
            .where(
                AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                AttemptRow.counted_in_pool.is_(False),
            )
            .group_by(AttemptRow.dataplane, AttemptRow.pool)
            .subquery()
        )
        # A job runs on one node: what one job can get is the most free on any one node.
        # (CASE, not least()/min(): SQLite and Postgres spell those differently; NULL: one machine.)
        usable = sa.case(
            (PoolRow.gpu_node_free < PoolRow.gpu_free, PoolRow.gpu_node_free),
            else_=PoolRow.gpu_free,
        )
        query = sa.select(
            PoolRow.dataplane, PoolRow.name, usable, sa.func.coalesce(held.c.gpus, 0)
        ).outerjoin(
            held, sa.and_(held.c.dataplane == PoolRow.dataplane, held.c.pool == PoolRow.name)
        )
        async with self._db.read() as session:
            rows = (await session.execute(query)).all()
        free = {(dp, pool): int(gpu_free) for dp, pool, gpu_free, _ in rows}
        holds = {(dp, pool): int(gpus) for dp, pool, _, gpus in rows if gpus}
        return free, holds

    async def apply(
        self, orders: Sequence[PlacementOrder], waiting: dict[str, str], now: datetime
    ) -> list[tuple[AttemptRecord, dict[str, Any]]]:
        """Create the attempts of a plan in one transaction; note why the others wait.

        A job that left QUEUED meanwhile (cancelled) is skipped: the conditional update
        is what makes the plan safe against concurrent cancels.
        """
        created: list[tuple[AttemptRecord, dict[str, Any]]] = []
        async with self._db.write() as session:
            for order in orders:
                job = await session.get(JobRow, order.job_id, with_for_update=True)
                if job is None or job.phase != JobPhase.QUEUED.value:
                    continue
                epoch = job.epoch + 1
                attempt = AttemptRow(
                    id=f"{job.id}-{epoch}",
                    job_id=job.id,
                    epoch=epoch,
                    dataplane=order.dataplane,
                    pool=order.pool,
                    gpus=order.gpus,
                    phase=AttemptPhase.PENDING.value,
                    reason="",
                    message="",
                    cancel_requested=False,
                    counted_in_pool=False,
                    created_at=now,
                )
                session.add(attempt)
                job.epoch = epoch
                job.phase = JobPhase.SCHEDULED.value
                job.current_attempt_id = attempt.id
                job.dataplane = order.dataplane
                job.pool = order.pool
                job.message = order.why
                job.updated_at = now
                add_event(session, job, "scheduled", order.why, now, attempt.id)
                await session.flush()
                created.append((attempt_record(attempt), dict(job.spec)))
            for job_id, message in waiting.items():
                await session.execute(
                    sa.update(JobRow)
                    .where(JobRow.id == job_id, JobRow.phase == JobPhase.QUEUED.value)
                    .values(message=message, updated_at=now)
                )
        return created
