"""Dataplanes, their pools, and what their agents report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from control_plane.domain.cordon import drain_message
from control_plane.domain.phases import AttemptPhase
from control_plane.domain.reconcile import (
    AttemptChange,
    KnownAttempt,
    ReconcilePlan,
    ReportedAttempt,
    reconcile,
)
from control_plane.domain.records import AttemptRecord, DataplaneRecord, PoolRecord
from control_plane.registry.database import Database
from control_plane.registry.group_commit import GroupCommit
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.rows import (
    apply_attempt_change,
    attempt_record,
    locked_jobs,
    pool_record,
)
from control_plane.registry.tables import AttemptRow, DataplaneRow, JobRow, PoolRow


@dataclass
class ReportOutcome:
    plan: ReconcilePlan
    # Attempts to launch again, with their job's spec.
    launches: list[tuple[AttemptRecord, Mapping[str, Any]]] = field(default_factory=list)
    changed_jobs: list[str] = field(default_factory=list)
    # (phase, reason) of each attempt this report ended, as recorded (for metrics).
    ended: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """One agent report waiting to be applied."""

    dataplane: str
    pools: Sequence[PoolRecord] | None  # None: an attempt update, pools unchanged
    reported: tuple[ReportedAttempt, ...]
    full_state: bool
    now: datetime
    refuse_revoked: bool


class TokenRevoked(Exception):
    """A report from a dataplane whose join token was revoked: nothing was recorded."""


class DataplaneStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._reports: GroupCommit[Report, ReportOutcome] = GroupCommit(
            self._apply_reports, name="agent-reports"
        )

    async def register(
        self,
        name: str,
        region: str,
        cloud: str,
        labels: Mapping[str, str],
        agent_version: str,
        now: datetime,
    ) -> None:
        async with self._db.write() as session:
            row = await session.get(DataplaneRow, name)
            if row is None:
                session.add(
                    DataplaneRow(
                        name=name,
                        region=region,
                        cloud=cloud,
                        labels=dict(labels),
                        agent_version=agent_version,
                        first_seen_at=now,
                        last_heartbeat_at=now,
                    )
                )
            else:
                row.region, row.cloud, row.labels = region, cloud, dict(labels)
                row.agent_version = agent_version
                row.last_heartbeat_at = now

    async def apply_report(
        self,
        dataplane: str,
        pools: Sequence[PoolRecord] | None,
        reported: Sequence[ReportedAttempt],
        *,
        full_state: bool,
        now: datetime,
        refuse_revoked: bool = False,
    ) -> ReportOutcome:
        """Apply one agent report: pools, liveness, and the reconciled attempts. Reports
        arriving together share one transaction (see group_commit.py); each is applied as
        if alone, in arrival order."""
        report = Report(dataplane, pools, tuple(reported), full_state, now, refuse_revoked)
        return await self._reports.write(report)

    async def _apply_reports(self, reports: Sequence[Report]) -> list[ReportOutcome | Exception]:
        """One transaction for a batch of reports, with a few statements for all of them."""
        results: list[ReportOutcome | Exception] = []
        async with self._db.write() as session:
            names = sorted({r.dataplane for r in reports})
            # Locked first, in name order: the lost timer (expire), a cancel and a drain
            # take the same locks in the same order, so none of them acts on these
            # attempts meanwhile and none deadlocks with another.
            dps = {
                row.name: row
                for row in await session.scalars(
                    sa.select(DataplaneRow)
                    .where(DataplaneRow.name.in_(names))
                    .order_by(DataplaneRow.name)
                    .with_for_update()
                )
            }
            with_pools = sorted({r.dataplane for r in reports if r.pools is not None})
            pool_rows: dict[str, dict[str, PoolRow]] = {name: {} for name in with_pools}
            if with_pools:
                for row in await session.scalars(
                    sa.select(PoolRow).where(PoolRow.dataplane.in_(with_pools))
                ):
                    pool_rows[row.dataplane][row.name] = row
            attempts = await _attempts_of(session, reports)
            jobs = await locked_jobs(
                session, (row.job_id for rows in attempts.values() for row in rows.values())
            )
            for report in reports:
                dp = dps.get(report.dataplane)
                if dp is None:
                    results.append(LookupError(f"dataplane {report.dataplane} is not registered"))
                elif report.refuse_revoked and dp.token_revoked_at is not None:
                    results.append(
                        TokenRevoked(f"the join token of {report.dataplane!r} was revoked")
                    )
                else:
                    dp.last_heartbeat_at = report.now
                    if report.pools is not None:
                        await _replace_pools(session, pool_rows[report.dataplane], report)
                    on_dataplane = attempts.get(report.dataplane, {})
                    results.append(await _reconcile(session, report, on_dataplane, jobs))
        return results

    async def expire(
        self, dataplanes: Sequence[str], now: datetime, heard_before: datetime
    ) -> list[str]:
        """Declare the live attempts on lost dataplanes LOST; returns the jobs that changed.

        The dataplane rows are locked first, as apply_report locks them, and a dataplane
        heard from since `heard_before` is left alone: a heartbeat that raced the lost
        timer wins, and a result it reported is never overwritten by LOST (nor the reverse).
        """
        changed: list[str] = []
        if not dataplanes:
            return changed
        async with self._db.write() as session:
            silent = [
                row.name
                for row in await session.scalars(
                    sa.select(DataplaneRow)
                    .where(DataplaneRow.name.in_(list(dataplanes)))
                    .order_by(DataplaneRow.name)
                    .with_for_update()
                )
                if row.last_heartbeat_at is None or row.last_heartbeat_at < heard_before
            ]
            rows = await session.scalars(
                sa.select(AttemptRow)
                .where(
                    AttemptRow.dataplane.in_(silent),
                    AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                )
                .with_for_update()
            )
            lost = list(rows)
            jobs = await locked_jobs(session, (row.job_id for row in lost))
            for row in lost:
                change = AttemptChange(
                    row.id,
                    AttemptPhase.LOST,
                    "DataplaneLost",
                    f"dataplane {row.dataplane} went silent",
                )
                if await apply_attempt_change(session, row, jobs.get(row.job_id), change, now):
                    changed.append(row.job_id)
        return changed

    async def list_dataplanes(self) -> list[DataplaneRecord]:
        async with self._db.read() as session:
            dataplanes = list(
                await session.scalars(sa.select(DataplaneRow).order_by(DataplaneRow.name))
            )
            pools = list(await session.scalars(sa.select(PoolRow).order_by(PoolRow.name)))
            counts = await session.execute(
                sa.select(AttemptRow.dataplane, sa.func.count())
                .where(AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES))
                .group_by(AttemptRow.dataplane)
            )
            active = {dataplane: int(count) for dataplane, count in counts}
        by_dataplane: dict[str, list[PoolRecord]] = {}
        for pool in pools:
            by_dataplane.setdefault(pool.dataplane, []).append(pool_record(pool))
        return [
            DataplaneRecord(
                name=row.name,
                region=row.region,
                cloud=row.cloud,
                labels=dict(row.labels),
                agent_version=row.agent_version,
                last_heartbeat_at=row.last_heartbeat_at,
                pools=tuple(by_dataplane.get(row.name, [])),
                active_attempts=int(active.get(row.name, 0)),
                cordoned_at=row.cordoned_at,
                cordon_reason=row.cordon_reason,
                drain_deadline=row.drain_deadline,
                stream_replica=row.stream_replica,
            )
            for row in dataplanes
        ]

    async def cordon(
        self, name: str, reason: str, drain_deadline: datetime | None, now: datetime
    ) -> bool:
        """Cordon (drain_deadline None) or drain; False for an unknown dataplane. Cordoning
        a draining dataplane keeps its deadline; a new drain sets the new one."""
        async with self._db.write() as session:
            row = await session.get(DataplaneRow, name, with_for_update=True)
            if row is None:
                return False
            row.cordoned_at = row.cordoned_at or now
            row.cordon_reason = reason
            if drain_deadline is not None:
                row.drain_deadline = drain_deadline
        return True

    async def uncordon(self, name: str) -> bool:
        async with self._db.write() as session:
            row = await session.get(DataplaneRow, name, with_for_update=True)
            if row is None:
                return False
            row.cordoned_at, row.cordon_reason, row.drain_deadline = None, "", None
        return True

    async def preempt_drained(self, now: datetime) -> list[AttemptRecord]:
        """Mark the live attempts of dataplanes whose drain deadline passed to be stopped
        (once); returns them, so that the caller tells their agents."""
        async with self._db.write() as session:
            drained = (
                sa.select(DataplaneRow.name)
                .where(DataplaneRow.drain_deadline.is_not(None), DataplaneRow.drain_deadline <= now)
                .scalar_subquery()
            )
            rows = list(
                await session.scalars(
                    sa.select(AttemptRow)
                    .where(
                        AttemptRow.dataplane.in_(drained),
                        AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                        AttemptRow.preempt_reason.is_(None),
                    )
                    .with_for_update()
                )
            )
            reasons = {
                row.name: row.cordon_reason
                for row in await session.scalars(
                    sa.select(DataplaneRow).where(
                        DataplaneRow.name.in_({attempt.dataplane for attempt in rows})
                    )
                )
            }
            for attempt in rows:
                attempt.cancel_requested = True
                attempt.preempt_reason = drain_message(reasons.get(attempt.dataplane, ""))
            return [attempt_record(row) for row in rows]



async def _replace_pools(session: Any, existing: dict[str, PoolRow], report: Report) -> None:
    """Make the dataplane's pool rows what the heartbeat says; a row is written only when
    something in it changed (a heartbeat is mostly the same as the one before)."""
    assert report.pools is not None
    gone = dict(existing)
    for pool in report.pools:
        row = gone.pop(pool.name, None)
        if row is None:
            row = PoolRow(dataplane=report.dataplane, name=pool.name)
            session.add(row)
            existing[pool.name] = row
        values = {
            "region": pool.region,
            "cloud": pool.cloud,
            "purchase_type": pool.purchase_type.value,
            "gpu_model": pool.gpu_model,
            "gpu_memory_gb": pool.gpu_memory_gb,
            "gpu_total": pool.gpu_total,
            "gpu_free": pool.gpu_free,
            "interconnect": pool.interconnect,
            "price_per_gpu_hour": pool.price_per_gpu_hour,
            "labels": dict(pool.labels),
            "gpu_node_size": pool.gpu_node_size,
            "gpu_node_free": pool.gpu_node_free,
        }
        if any(getattr(row, key, None) != value for key, value in values.items()):
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = report.now
    for name, row in gone.items():
        del existing[name]
        await session.delete(row)


async def _attempts_of(
    session: Any, reports: Sequence[Report]
) -> dict[str, dict[str, AttemptRow]]:
    """The attempts the reports name, and every live attempt of the dataplanes that sent
    their full state: all that reconciling the batch may touch, read in one statement;
    by dataplane, then id."""
    conditions = []
    full = sorted({r.dataplane for r in reports if r.full_state})
    if full:
        conditions.append(
            sa.and_(AttemptRow.dataplane.in_(full), AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES))
        )
    named = sorted({a.id for r in reports for a in r.reported})
    if named:
        conditions.append(AttemptRow.id.in_(named))
    if not conditions:
        return {}
    by_dataplane: dict[str, dict[str, AttemptRow]] = {}
    for row in await session.scalars(sa.select(AttemptRow).where(sa.or_(*conditions))):
        by_dataplane.setdefault(row.dataplane, {})[row.id] = row
    return by_dataplane


async def _reconcile(
    session: Any, report: Report, attempts: dict[str, AttemptRow], jobs: dict[str, JobRow]
) -> ReportOutcome:
    """One report against its dataplane's attempts as they stand (after earlier reports
    of the batch changed them)."""
    named = {a.id for a in report.reported}
    mine = {
        row.id: row
        for row in attempts.values()
        if row.id in named or (report.full_state and not AttemptPhase(row.phase).final)
    }
    known = {
        row.id: KnownAttempt(row.id, row.epoch, AttemptPhase(row.phase), row.cancel_requested)
        for row in mine.values()
    }
    if report.pools is not None:
        # This heartbeat's free GPUs already account for the attempts it lists.
        for reported in report.reported:
            if reported.id in mine:
                mine[reported.id].counted_in_pool = True
    outcome = ReportOutcome(reconcile(known, report.reported, full_state=report.full_state))
    for change in outcome.plan.changes:
        row = mine[change.attempt_id]
        was_final = AttemptPhase(row.phase).final
        if await apply_attempt_change(session, row, jobs.get(row.job_id), change, report.now):
            outcome.changed_jobs.append(row.job_id)
        if not was_final and AttemptPhase(row.phase).final:
            outcome.ended.append((row.phase, row.reason))
    for attempt_id in outcome.plan.launch:
        row = mine[attempt_id]
        job = jobs.get(row.job_id)
        if job is not None:
            outcome.launches.append((attempt_record(row), dict(job.spec)))
    return outcome
