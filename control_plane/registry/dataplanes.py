"""Dataplanes, their pools, and what their agents report."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from control_plane.domain.cordon import drain_message
from control_plane.domain.phases import AttemptPhase, PurchaseType
from control_plane.domain.reconcile import (
    AttemptChange,
    ReportedAttempt,
)
from control_plane.domain.records import AttemptRecord, DataplaneRecord, PoolRecord
from control_plane.registry.attempt_states import (
    ATTEMPTS,
    apply_attempt_change,
    lock_jobs,
    read_attempts,
    select_attempts,
    write_changes,
)
from control_plane.registry.database import Database
from control_plane.registry.group_commit import GroupCommit
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.reports import (
    DATAPLANES,
    POOL_COLUMNS,
    POOLS,
    Report,
    ReportOutcome,
    apply_reports,
)
from control_plane.registry.rows import attempt_record
from control_plane.registry.tables import AttemptRow, DataplaneRow

# A lone agent report waits this long for others to share its transaction. Reports are
# not on the dispatch path (submit -> placement -> launch); a job's end shows this late.
REPORT_LINGER_S = 0.01


class DataplaneStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._reports: GroupCommit[Report, ReportOutcome] = GroupCommit(
            partial(apply_reports, db), linger_s=REPORT_LINGER_S, name="agent-reports"
        )
        db.close_with(self._reports.close)

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

    def apply_report(
        self,
        dataplane: str,
        pools: Sequence[PoolRecord] | None,
        reported: Sequence[ReportedAttempt],
        *,
        full_state: bool,
        now: datetime,
        refuse_revoked: bool = False,
    ) -> asyncio.Future[ReportOutcome]:
        """Apply one agent report: pools, liveness, and the reconciled attempts; await the
        outcome. Reports arriving together share one transaction (see group_commit.py);
        each is applied as if alone, in the order of the calls (queued when called)."""
        report = Report(dataplane, pools, tuple(reported), full_state, now, refuse_revoked)
        return self._reports.write(report)

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
            lost = await read_attempts(
                session,
                select_attempts(
                    sa.and_(
                        ATTEMPTS.c.dataplane.in_(silent),
                        ATTEMPTS.c.phase.in_(LIVE_ATTEMPT_PHASES),
                    ),
                    lock=True,
                ),
            )
            jobs = await lock_jobs(session, (attempt.job_id for attempt in lost))
            events: list[dict[str, Any]] = []
            for attempt in lost:
                change = AttemptChange(
                    attempt.id,
                    AttemptPhase.LOST,
                    "DataplaneLost",
                    f"dataplane {attempt.dataplane} went silent",
                )
                job = jobs.get(attempt.job_id)
                if await apply_attempt_change(session, attempt, job, change, now, events):
                    changed.append(attempt.job_id)
            await write_changes(session, lost, jobs.values(), events)
        return changed

    async def list_dataplanes(self) -> list[DataplaneRecord]:
        """Every dataplane with its pools and live attempt count (Core: the scheduler reads
        this every pass, for thousands of dataplanes)."""
        dataplane_columns = [
            "name", "region", "cloud", "labels", "agent_version", "last_heartbeat_at",
            "cordoned_at", "cordon_reason", "drain_deadline", "stream_replica",
        ]
        pool_columns = ["dataplane", "name", *POOL_COLUMNS]
        async with self._db.read() as session:
            dataplanes = await session.execute(
                sa.select(*(DATAPLANES.c[c] for c in dataplane_columns))
                .order_by(DATAPLANES.c.name)
            )
            rows = [dict(zip(dataplane_columns, row, strict=True)) for row in dataplanes]
            pools = await session.execute(
                sa.select(*(POOLS.c[c] for c in pool_columns)).order_by(POOLS.c.name)
            )
            by_dataplane: dict[str, list[PoolRecord]] = {}
            for row in pools:
                values = dict(zip(pool_columns, row, strict=True))
                by_dataplane.setdefault(values["dataplane"], []).append(
                    PoolRecord(
                        **{**values, "purchase_type": PurchaseType(values["purchase_type"]),
                           "labels": dict(values["labels"])}
                    )
                )
            counts = await session.execute(
                sa.select(ATTEMPTS.c.dataplane, sa.func.count())
                .where(ATTEMPTS.c.phase.in_(LIVE_ATTEMPT_PHASES))
                .group_by(ATTEMPTS.c.dataplane)
            )
            active = {dataplane: int(count) for dataplane, count in counts}
        return [
            DataplaneRecord(
                **{**row, "labels": dict(row["labels"])},
                pools=tuple(by_dataplane.get(row["name"], [])),
                active_attempts=active.get(row["name"], 0),
            )
            for row in rows
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
