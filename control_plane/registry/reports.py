"""Agent reports applied to the registry: a batch of heartbeats and attempt updates in one
transaction (the group commit of DataplaneStore.apply_report), with SQLAlchemy Core and a
few statements for the whole batch. Each report is reconciled on its own
(`domain.reconcile`), in arrival order, against the attempts as earlier reports of the
batch left them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from control_plane.domain.phases import AttemptPhase
from control_plane.domain.reconcile import (
    KnownAttempt,
    ReconcilePlan,
    ReportedAttempt,
    reconcile,
)
from control_plane.domain.records import AttemptRecord, PoolRecord
from control_plane.registry.attempt_states import (
    ATTEMPTS,
    JOBS,
    AttemptState,
    JobState,
    apply_attempt_change,
    list_param,
    lock_jobs,
    read_attempts,
    select_attempts,
    write_changes,
)
from control_plane.registry.database import Database
from control_plane.registry.jobs import LIVE_ATTEMPT_PHASES
from control_plane.registry.tables import DataplaneRow, PoolRow

DATAPLANES = cast(sa.Table, DataplaneRow.__table__)
POOLS = cast(sa.Table, PoolRow.__table__)


@dataclass
class ReportOutcome:
    plan: ReconcilePlan
    # Attempts to launch again, with their job's spec.
    launches: list[tuple[AttemptRecord, Mapping[str, Any]]] = field(default_factory=list)
    changed_jobs: list[str] = field(default_factory=list)
    # (phase, reason) of each attempt this report ended, as recorded (for metrics).
    ended: list[tuple[str, str]] = field(default_factory=list)
    # Whether the dataplane's pools changed (capacity, shape): the scheduler should look.
    pools_changed: bool = False


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



# The batch's statements, built once (see attempt_states.select_attempts).
_LOCK_DATAPLANES = (
    sa.select(DATAPLANES.c.name, DATAPLANES.c.token_revoked_at)
    .where(DATAPLANES.c.name.in_(list_param("names")))
    .order_by(DATAPLANES.c.name)
    .with_for_update()
)
_HEARD = (
    sa.update(DATAPLANES)
    .where(DATAPLANES.c.name == sa.bindparam("key"))
    .values(last_heartbeat_at=sa.bindparam("heard"))
)
_LIVE_ON = sa.and_(
    ATTEMPTS.c.dataplane.in_(list_param("full")), ATTEMPTS.c.phase.in_(LIVE_ATTEMPT_PHASES)
)
_NAMED = ATTEMPTS.c.id.in_(list_param("named"))
# By what the batch holds: full-state reports, named attempts, or both.
_ATTEMPTS_OF = {
    (True, False): select_attempts(_LIVE_ON),
    (False, True): select_attempts(_NAMED),
    (True, True): select_attempts(sa.or_(_LIVE_ON, _NAMED)),
}
_SPECS = sa.select(JOBS.c.id, JOBS.c.spec).where(JOBS.c.id.in_(list_param("ids")))


async def apply_reports(db: Database, reports: Sequence[Report]) -> list[ReportOutcome | Exception]:
    """One transaction for a batch of reports, with a few statements for all of them
    (SQLAlchemy Core: this is the hottest write path; see attempt_states.py)."""
    results: list[ReportOutcome | Exception] = []
    async with db.write() as session:
        names = sorted({r.dataplane for r in reports})
        # Locked first, in name order: the lost timer (expire), a cancel and a drain
        # take the same locks in the same order, so none of them acts on these
        # attempts meanwhile and none deadlocks with another.
        revoked: dict[str, datetime | None] = {
            name: at for name, at in await session.execute(_LOCK_DATAPLANES, {"names": names})
        }
        pools = await _PoolWrites.read(session, [r for r in reports if r.pools is not None])
        attempts = await _attempts_of(session, reports)
        jobs = await lock_jobs(session, _jobs_that_may_move(reports, attempts))
        events: list[dict[str, Any]] = []
        heard: dict[str, datetime] = {}
        for report in reports:
            if report.dataplane not in revoked:
                results.append(LookupError(f"dataplane {report.dataplane} is not registered"))
            elif report.refuse_revoked and revoked[report.dataplane] is not None:
                results.append(
                    TokenRevoked(f"the join token of {report.dataplane!r} was revoked")
                )
            else:
                heard[report.dataplane] = report.now
                changed = report.pools is not None and pools.apply(report)
                on_dataplane = attempts.get(report.dataplane, {})
                outcome = await _reconcile(session, report, on_dataplane, jobs, events)
                outcome.pools_changed = changed
                results.append(outcome)
        if heard:
            await session.execute(
                _HEARD, [{"key": name, "heard": at} for name, at in heard.items()]
            )
        await pools.write(session)
        await write_changes(
            session, (a for on_dp in attempts.values() for a in on_dp.values()),
            jobs.values(), events,
        )
        await _add_specs(session, [r for r in results if isinstance(r, ReportOutcome)])
    return results


POOL_COLUMNS = [
    "region", "cloud", "purchase_type", "gpu_model", "gpu_memory_gb", "gpu_total", "gpu_free",
    "interconnect", "price_per_gpu_hour", "labels", "gpu_node_size", "gpu_node_free",
]


def _pool_values(pool: PoolRecord) -> dict[str, Any]:
    """A pool's columns as stored (the record's fields of the same names)."""
    values = {column: getattr(pool, column) for column in POOL_COLUMNS}
    values["purchase_type"] = pool.purchase_type.value
    values["labels"] = dict(pool.labels)
    return values


_POOLS_OF = sa.select(
    POOLS.c.dataplane, POOLS.c.name, *(POOLS.c[c] for c in POOL_COLUMNS)
).where(POOLS.c.dataplane.in_(list_param("names")))
_UPDATE_POOL = (
    sa.update(POOLS)
    .where(POOLS.c.dataplane == sa.bindparam("key_dp"), POOLS.c.name == sa.bindparam("key_name"))
    .values({c: sa.bindparam(c) for c in [*POOL_COLUMNS, "updated_at"]})
)


@dataclass
class _PoolWrites:
    """The pools of the batch's dataplanes as stored, and what the heartbeats change: a row
    is written only when something in it changed (most heartbeats repeat the last one)."""

    stored: dict[str, dict[str, dict[str, Any]]]   # dataplane -> pool -> column values
    changed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    added: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    gone: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    async def read(cls, session: Any, reports: Sequence[Report]) -> _PoolWrites:
        names = sorted({r.dataplane for r in reports})
        stored: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
        if names:
            for dataplane, name, *values in await session.execute(_POOLS_OF, {"names": names}):
                stored[dataplane][name] = dict(zip(POOL_COLUMNS, values, strict=True))
        return cls(stored)

    def apply(self, report: Report) -> bool:
        """Take the heartbeat's pools; whether anything in them changed."""
        assert report.pools is not None
        stored = self.stored[report.dataplane]
        changed = False
        reported = {pool.name: _pool_values(pool) for pool in report.pools}
        for name, values in reported.items():
            key = (report.dataplane, name)
            if stored.get(name) != values:
                changed = True
                # A row is inserted only if the database has none (not one the batch
                # removed, nor one it added already): else it is updated.
                row = {**values, "updated_at": report.now}
                if key in self.added or (name not in stored and key not in self.gone):
                    self.added[key] = row
                else:
                    self.changed[key] = row
            self.gone.discard(key)
            stored[name] = values
        for name in [name for name in stored if name not in reported]:
            key = (report.dataplane, name)
            changed = True
            del stored[name]
            self.changed.pop(key, None)
            if self.added.pop(key, None) is None:
                self.gone.add(key)
        return changed

    async def write(self, session: Any) -> None:
        for dataplane, name in sorted(self.gone):
            await session.execute(
                sa.delete(POOLS).where(POOLS.c.dataplane == dataplane, POOLS.c.name == name)
            )
        if self.changed:
            await session.execute(
                _UPDATE_POOL,
                [{"key_dp": dp, "key_name": name, **values}
                 for (dp, name), values in self.changed.items()],
            )
        if self.added:
            await session.execute(
                sa.insert(POOLS),
                [{"dataplane": dp, "name": name, **values}
                 for (dp, name), values in self.added.items()],
            )


async def _attempts_of(
    session: Any, reports: Sequence[Report]
) -> dict[str, dict[str, AttemptState]]:
    """The attempts the reports name, and every live attempt of the dataplanes that sent
    their full state: all that reconciling the batch may touch, read in one statement;
    by dataplane, then id."""
    full = sorted({r.dataplane for r in reports if r.full_state})
    named = sorted({a.id for r in reports for a in r.reported})
    if not full and not named:
        return {}
    query = _ATTEMPTS_OF[bool(full), bool(named)]
    by_dataplane: dict[str, dict[str, AttemptState]] = {}
    for attempt in await read_attempts(session, query, {"full": full, "named": named}):
        by_dataplane.setdefault(attempt.dataplane, {})[attempt.id] = attempt
    return by_dataplane


def _jobs_that_may_move(
    reports: Sequence[Report], attempts: dict[str, dict[str, AttemptState]]
) -> set[str]:
    """The jobs a batch may change, the only ones it locks: those of attempts reported in
    another phase than stored, and of live attempts a full-state report leaves out. (A
    heartbeat of an agent running a thousand attempts locks none of their jobs.)"""
    jobs: set[str] = set()
    for report in reports:
        on_dataplane = attempts.get(report.dataplane, {})
        for reported in report.reported:
            attempt = on_dataplane.get(reported.id)
            if attempt is not None and attempt.phase != reported.phase.value:
                jobs.add(attempt.job_id)
        if report.full_state:
            listed = {reported.id for reported in report.reported}
            jobs.update(
                attempt.job_id
                for attempt in on_dataplane.values()
                if attempt.id not in listed and not AttemptPhase(attempt.phase).final
            )
    return jobs


async def _reconcile(
    session: Any,
    report: Report,
    attempts: dict[str, AttemptState],
    jobs: dict[str, JobState],
    events: list[dict[str, Any]],
) -> ReportOutcome:
    """One report against its dataplane's attempts as they stand (after earlier reports
    of the batch changed them)."""
    if report.full_state:
        named = {a.id for a in report.reported}
        mine = {
            attempt.id: attempt
            for attempt in attempts.values()
            if attempt.id in named or not AttemptPhase(attempt.phase).final
        }
    else:   # an update names its attempts: no need to look at the dataplane's others
        mine = {a.id: attempts[a.id] for a in report.reported if a.id in attempts}
    known = {
        a.id: KnownAttempt(a.id, a.epoch, AttemptPhase(a.phase), a.cancel_requested)
        for a in mine.values()
    }
    if report.pools is not None:
        # This heartbeat's free GPUs already account for the attempts it lists.
        for reported in report.reported:
            attempt = mine.get(reported.id)
            if attempt is not None and not attempt.counted_in_pool:
                attempt.counted_in_pool = attempt.dirty = True
    outcome = ReportOutcome(reconcile(known, report.reported, full_state=report.full_state))
    for change in outcome.plan.changes:
        attempt = mine[change.attempt_id]
        was_final = AttemptPhase(attempt.phase).final
        if attempt.job_id not in jobs:   # not foreseen by _jobs_that_may_move: lock it now
            jobs.update(await lock_jobs(session, [attempt.job_id]))
        job = jobs.get(attempt.job_id)
        if await apply_attempt_change(session, attempt, job, change, report.now, events):
            outcome.changed_jobs.append(attempt.job_id)
        if not was_final and AttemptPhase(attempt.phase).final:
            outcome.ended.append((attempt.phase, attempt.reason))
    for attempt_id in outcome.plan.launch:
        outcome.launches.append((mine[attempt_id].record(), {}))
    return outcome


async def _add_specs(session: Any, outcomes: Sequence[ReportOutcome]) -> None:
    """The job specs of the attempts to launch again (read only for those: specs are big)."""
    job_ids = sorted({attempt.job_id for o in outcomes for attempt, _ in o.launches})
    if not job_ids:
        return
    specs: dict[str, Any] = {
        job_id: spec for job_id, spec in await session.execute(_SPECS, {"ids": job_ids})
    }
    for outcome in outcomes:
        outcome.launches = [
            (attempt, dict(specs[attempt.job_id]))
            for attempt, _ in outcome.launches
            if attempt.job_id in specs
        ]
