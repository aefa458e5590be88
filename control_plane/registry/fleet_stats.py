"""What the control plane's /metrics page reads from the registry: one short read per scrape.

The jobs and attempts tables grow without bound (finished rows stay for history), so every
query here touches live rows only, through an index:

- jobs per live phase: a range of ``ix_jobs_phase_priority`` (phase first);
- queued jobs per project: the same index, ``phase = 'queued'``, then those rows' project;
- live attempts per dataplane: ``ix_attempts_dataplane_phase`` (dataplane, phase), both
  columns given (tests/metrics checks the plans on SQLite and Postgres).

The dataplanes and pools tables are small (one row per dataplane and per pool) and are read
whole. Nothing here groups over finished jobs or attempts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from control_plane.domain.phases import AttemptPhase, JobPhase
from control_plane.registry.database import Database
from control_plane.registry.tables import AttemptRow, DataplaneRow, JobRow, PoolRow

LIVE_JOB_PHASES = tuple(p.value for p in JobPhase if not p.final)
LIVE_ATTEMPT_PHASES = tuple(p.value for p in AttemptPhase if not p.final)


@dataclass(frozen=True)
class DataplaneStat:
    name: str
    last_heartbeat_at: datetime | None
    cordoned_at: datetime | None
    drain_deadline: datetime | None
    live_attempts: int


@dataclass(frozen=True)
class PoolStat:
    dataplane: str
    pool: str
    purchase_type: str   # reserved | on_demand | spot
    gpu_total: int
    gpu_free: int        # as the agent last reported it


@dataclass(frozen=True)
class FleetSnapshot:
    jobs_by_phase: Mapping[str, int]       # every live job phase, 0 when none
    queued_by_project: Mapping[str, int]   # projects with queued jobs only
    dataplanes: tuple[DataplaneStat, ...]
    pools: tuple[PoolStat, ...]


class FleetStats:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def snapshot(self) -> FleetSnapshot:
        async with self._db.read() as session:
            by_phase = await session.execute(
                sa.select(JobRow.phase, sa.func.count())
                .where(JobRow.phase.in_(LIVE_JOB_PHASES))
                .group_by(JobRow.phase)
            )
            jobs_by_phase = dict.fromkeys(LIVE_JOB_PHASES, 0)
            jobs_by_phase.update({phase: int(count) for phase, count in by_phase})
            by_project = await session.execute(
                sa.select(JobRow.project, sa.func.count())
                .where(JobRow.phase == JobPhase.QUEUED.value)
                .group_by(JobRow.project)
                .order_by(JobRow.project)
            )
            queued = {project: int(count) for project, count in by_project}
            dataplanes = list(
                await session.execute(
                    sa.select(
                        DataplaneRow.name,
                        DataplaneRow.last_heartbeat_at,
                        DataplaneRow.cordoned_at,
                        DataplaneRow.drain_deadline,
                    ).order_by(DataplaneRow.name)
                )
            )
            live: dict[str, int] = {}
            if dataplanes:
                # Both index columns given: the count reads live attempts only.
                counts = await session.execute(
                    sa.select(AttemptRow.dataplane, sa.func.count())
                    .where(
                        AttemptRow.dataplane.in_([row.name for row in dataplanes]),
                        AttemptRow.phase.in_(LIVE_ATTEMPT_PHASES),
                    )
                    .group_by(AttemptRow.dataplane)
                )
                live = {name: int(count) for name, count in counts}
            pools = await session.execute(
                sa.select(
                    PoolRow.dataplane,
                    PoolRow.name,
                    PoolRow.purchase_type,
                    PoolRow.gpu_total,
                    PoolRow.gpu_free,
                ).order_by(PoolRow.dataplane, PoolRow.name)
            )
            pool_stats = tuple(
                PoolStat(row.dataplane, row.name, row.purchase_type, row.gpu_total, row.gpu_free)
                for row in pools
            )
        return FleetSnapshot(
            jobs_by_phase=jobs_by_phase,
            queued_by_project=queued,
            dataplanes=tuple(
                DataplaneStat(
                    name=row.name,
                    last_heartbeat_at=row.last_heartbeat_at,
                    cordoned_at=row.cordoned_at,
                    drain_deadline=row.drain_deadline,
                    live_attempts=live.get(row.name, 0),
                )
                for row in dataplanes
            ),
            pools=pool_stats,
        )
