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
from control_plane.registry.attempt_states import ATTEMPTS, JOB_EVENTS, JOBS, list_param
from control_plane.registry.database import Database
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.tables import AttemptRow, JobRow, PolicyVersionRow, PoolRow


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    spec: dict[str, Any]  # the JobSpec as protobuf JSON
    priority: int  # the job's own priority (the policy's rule priority comes first)
    created_at: datetime
    message: str


@dataclass(frozen=True)
class PassInputs:
    queued: list[QueuedJob]
    policy_version: int
    # None when the pass did not ask for them (it still has the capacity it computed).
    free: dict[PoolKey, int] | None
    holds: dict[PoolKey, int] | None


@dataclass(frozen=True)
class PlacementOrder:
    job_id: str
    dataplane: str
    pool: str
    gpus: int
    why: str
    spec: dict[str, Any]   # as the pass read it: a job's spec never changes after submit


class SchedulingStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def attempt_spans(self, now: datetime, projects: Sequence[str]) -> list[AttemptSpan]:
        """The attempts of these projects (those with quotas) that hold GPUs now or ran
        today, with their project. Only quota'd projects: the day's attempts of a busy
        fleet are many, and a pass must not read them all."""
        if not projects:
            return []
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
                JobRow.project.in_(sorted(projects)),
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
        async with self._db.read() as session:
            return await _capacity(session)

    async def pass_inputs(self, limit: int, *, capacity: bool = True) -> PassInputs:
        """What a scheduling pass reads, in one session (one connection, one round trip
        each): the queue's head (the job's own priority first, then in submit order; the
        scheduler orders it by the policy's rule priority) with the policy version in
        force, and if the queue is not empty and the pass asks for it, the capacity."""
        async with self._db.read() as session:
            rows = (await session.execute(_QUEUED, {"limit": limit})).all()
            if not rows:
                return PassInputs([], 0, {}, {})
            queued = [
                QueuedJob(job_id, dict(spec), priority, created_at, message)
                for job_id, spec, priority, created_at, message, _ in rows
            ]
            free, holds = await _capacity(session) if capacity else (None, None)
        return PassInputs(queued, int(rows[0][-1] or 0), free, holds)

    async def apply(
        self, orders: Sequence[PlacementOrder], waiting: dict[str, str], now: datetime
    ) -> list[tuple[AttemptRecord, dict[str, Any]]]:
        """Create the attempts of a plan in one transaction; note why the others wait.

        A job that left QUEUED meanwhile (cancelled) is skipped: the conditional update
        is what makes the plan safe against concurrent cancels.
        """
        created: list[tuple[AttemptRecord, dict[str, Any]]] = []
        async with self._db.write() as session:
            # One statement locks every job of the plan that is still QUEUED (Core: the
            # scheduler's writes are as hot as the agents').
            epochs: dict[str, int] = {}
            if orders:
                ids = sorted(order.job_id for order in orders)
                epochs = {
                    job_id: epoch
                    for job_id, epoch in await session.execute(_LOCK_QUEUED, {"ids": ids})
                }
            attempts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for order in orders:
                if order.job_id not in epochs:
                    continue
                epoch = epochs[order.job_id] + 1
                attempt_id = f"{order.job_id}-{epoch}"
                attempt: dict[str, Any] = {
                    "id": attempt_id,
                    "job_id": order.job_id,
                    "epoch": epoch,
                    "dataplane": order.dataplane,
                    "pool": order.pool,
                    "gpus": order.gpus,
                    "phase": AttemptPhase.PENDING.value,
                    "reason": "",
                    "message": "",
                    "exit_code": None,
                    "cancel_requested": False,
                    "preempt_reason": None,
                    "counted_in_pool": False,
                    "outputs": None,
                    "created_at": now,
                    "started_at": None,
                    "finished_at": None,
                }
                attempts.append(attempt)
                updates.append(
                    {"key": order.job_id, "epoch": epoch, "attempt": attempt_id,
                     "dataplane": order.dataplane, "pool": order.pool, "why": order.why,
                     "now": now}
                )
                events.append(
                    {"job_id": order.job_id, "at": now, "phase": JobPhase.SCHEDULED.value,
                     "attempt_id": attempt_id, "kind": "scheduled", "message": order.why}
                )
                created.append((
                    AttemptRecord(
                        id=attempt_id, job_id=order.job_id, epoch=epoch,
                        dataplane=order.dataplane, pool=order.pool, gpus=order.gpus,
                        phase=AttemptPhase.PENDING, reason="", message="", exit_code=None,
                        cancel_requested=False, created_at=now, started_at=None,
                        finished_at=None,
                    ),
                    order.spec,
                ))
            if attempts:
                await session.execute(_INSERT_ATTEMPTS, attempts)
                await session.execute(_SCHEDULED, updates)
                await session.execute(_INSERT_EVENTS, events)
            if waiting:
                await session.execute(
                    _WAITING,
                    [{"job_id": job_id, "why": why, "now": now}
                     for job_id, why in waiting.items()],
                )
        return created


# A pass's statements, built once (see attempt_states.select_attempts).
_QUEUED = (
    sa.select(
        JOBS.c.id, JOBS.c.spec, JOBS.c.priority, JOBS.c.created_at, JOBS.c.message,
        # The policy in force, in the same round trip (computed once per statement).
        sa.select(sa.func.max(PolicyVersionRow.version)).scalar_subquery(),
    )
    .where(JOBS.c.phase == JobPhase.QUEUED.value)
    .order_by(JOBS.c.priority.desc(), JOBS.c.created_at, JOBS.c.id)
    .limit(sa.bindparam("limit"))
)
_LOCK_QUEUED = (
    sa.select(JOBS.c.id, JOBS.c.epoch)
    .where(JOBS.c.id.in_(list_param("ids")), JOBS.c.phase == JobPhase.QUEUED.value)
    .order_by(JOBS.c.id)
    .with_for_update()
)
_INSERT_ATTEMPTS = sa.insert(ATTEMPTS)
_INSERT_EVENTS = sa.insert(JOB_EVENTS)
_SCHEDULED = (
    sa.update(JOBS)
    .where(JOBS.c.id == sa.bindparam("key"))
    .values(
        epoch=sa.bindparam("epoch"),
        phase=JobPhase.SCHEDULED.value,
        current_attempt_id=sa.bindparam("attempt"),
        dataplane=sa.bindparam("dataplane"),
        pool=sa.bindparam("pool"),
        message=sa.bindparam("why"),
        updated_at=sa.bindparam("now"),
    )
)
_WAITING = (
    sa.update(JOBS)
    .where(JOBS.c.id == sa.bindparam("job_id"), JOBS.c.phase == JobPhase.QUEUED.value)
    .values(message=sa.bindparam("why"), updated_at=sa.bindparam("now"))
)


def _capacity_query() -> sa.Select[Any]:
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
    return sa.select(
        PoolRow.dataplane, PoolRow.name, usable, sa.func.coalesce(held.c.gpus, 0)
    ).outerjoin(
        held, sa.and_(held.c.dataplane == PoolRow.dataplane, held.c.pool == PoolRow.name)
    )


_CAPACITY = _capacity_query()


async def _capacity(session: Any) -> tuple[dict[PoolKey, int], dict[PoolKey, int]]:
    rows = (await session.execute(_CAPACITY)).all()
    free = {(dp, pool): int(gpu_free) for dp, pool, gpu_free, _ in rows}
    holds = {(dp, pool): int(gpus) for dp, pool, _, gpus in rows if gpus}
    return free, holds
