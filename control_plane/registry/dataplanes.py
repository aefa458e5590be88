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
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.rows import apply_attempt_change, attempt_record, pool_record
from control_plane.registry.tables import AttemptRow, DataplaneRow, JobRow, PoolRow


@dataclass
class ReportOutcome:
    plan: ReconcilePlan
    # Attempts to launch again, with their job's spec.
    launches: list[tuple[AttemptRecord, Mapping[str, Any]]] = field(default_factory=list)
    changed_jobs: list[str] = field(default_factory=list)


class TokenRevoked(Exception):
    """A report from a dataplane whose join token was revoked: nothing was recorded."""


class DataplaneStore:
    def __init__(self, db: Database) -> None:
        self._db = db

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
        """One transaction per report: pools, liveness, and the reconciled attempts."""
        async with self._db.write() as session:
            # Locked first: the lost timer (expire) takes the same lock, so a report and the
            # timer never act on the same attempts at once.
            dp = await session.get(DataplaneRow, dataplane, with_for_update=True)
            if dp is None:
                raise LookupError(f"dataplane {dataplane} is not registered")
            if refuse_revoked and dp.token_revoked_at is not None:
                raise TokenRevoked(f"the join token of {dataplane!r} was revoked")
            dp.last_heartbeat_at = now
            if pools is not None:
                await _replace_pools(session, dataplane, pools, now)
            ids = [r.id for r in reported]
            condition = AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES) if full_state else sa.false()
            rows = {
                row.id: row
                for row in await session.scalars(
                    sa.select(AttemptRow).where(
                        AttemptRow.dataplane == dataplane,
                        sa.or_(AttemptRow.id.in_(ids), condition),
                    )
                )
            }
            known = {
                row.id: KnownAttempt(
                    row.id, row.epoch, AttemptPhase(row.phase), row.cancel_requested
                )
                for row in rows.values()
            }
            if pools is not None:
                # This heartbeat's free GPUs already account for the attempts it lists.
                for report in reported:
                    if report.id in rows:
                        rows[report.id].counted_in_pool = True
            outcome = ReportOutcome(reconcile(known, reported, full_state=full_state))
            for change in outcome.plan.changes:
                if await apply_attempt_change(session, rows[change.attempt_id], change, now):
                    outcome.changed_jobs.append(rows[change.attempt_id].job_id)
            for attempt_id in outcome.plan.launch:
                row = rows[attempt_id]
                job = await session.get(JobRow, row.job_id)
                if job is not None:
                    outcome.launches.append((attempt_record(row), dict(job.spec)))
        return outcome

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
            for row in list(rows):
                change = AttemptChange(
                    row.id,
                    AttemptPhase.LOST,
                    "DataplaneLost",
                    f"dataplane {row.dataplane} went silent",
                )
                if await apply_attempt_change(session, row, change, now):
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



async def _replace_pools(
    session: Any, dataplane: str, pools: Sequence[PoolRecord], now: datetime
) -> None:
    existing = {
        row.name: row
        for row in await session.scalars(sa.select(PoolRow).where(PoolRow.dataplane == dataplane))
    }
    for pool in pools:
        row = existing.pop(pool.name, None)
        if row is None:
            row = PoolRow(dataplane=dataplane, name=pool.name)
            session.add(row)
        row.region, row.cloud = pool.region, pool.cloud
        row.purchase_type = pool.purchase_type.value
        row.gpu_model, row.gpu_memory_gb = pool.gpu_model, pool.gpu_memory_gb
        row.gpu_total, row.gpu_free = pool.gpu_total, pool.gpu_free
        row.interconnect, row.price_per_gpu_hour = pool.interconnect, pool.price_per_gpu_hour
        row.labels = dict(pool.labels)
        row.gpu_node_size, row.gpu_node_free = pool.gpu_node_size, pool.gpu_node_free
        row.updated_at = now
    for gone in existing.values():
        await session.delete(gone)
