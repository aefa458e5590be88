"""The scheduler: reads the queue and the fleet, asks the pure placement for a plan,
applies the plan in one transaction, then tells the agents. It also runs the lost timer
and a drain's deadline. Of several replicas on one database only the leader runs passes.

One place applies plans (`SchedulingStore.apply`); the plan itself comes from
`domain.placement`, which has no I/O and is tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass

from control_plane.clock import Clock
from control_plane.domain.health import Timers, expiry_suspended
from control_plane.domain.phases import DataplaneHealth
from control_plane.domain.placement import (
    CapacityLedger,
    DataplaneView,
    Decision,
    JobDemand,
    ledger_for,
    never_fits,
    place,
)
from control_plane.domain.policy import (
    DEFAULT_POLICY,
    Policy,
    PolicyError,
    ProjectUsage,
    QuotaLedger,
    parse_policy,
    queue_key,
)
from control_plane.domain.records import DataplaneRecord, PoolRecord
from control_plane.domain.usage import usage_by_project
from control_plane.metrics import ControlPlaneMetrics
from control_plane.registry import (
    DataplaneStore,
    Leadership,
    PlacementOrder,
    PolicyStore,
    QueuedJob,
    SchedulingStore,
)
from control_plane.sessions import SessionHub
from control_plane.wire import cancel_message, demand_from_json, launch_message

log = logging.getLogger(__name__)

# How old the fleet view that submits are checked against may be (see never_fits).
SUBMIT_VIEW_MAX_AGE_S = 1.0


class Wake(enum.Enum):
    """Why a pass should run: what it must read again."""

    NEW_JOBS = "new jobs"   # only the queue grew: dataplanes and free GPUs as last left
    CAPACITY = "capacity"   # attempts ended: free GPUs grew (a kept ledger undercounts)
    FLEET = "fleet"         # dataplanes joined, left or changed pools; cordons; policies


@dataclass(frozen=True)
class PassResult:
    placed: int
    waiting: int
    expired_jobs: int


class Scheduler:
    def __init__(
        self,
        scheduling: SchedulingStore,
        dataplanes: DataplaneStore,
        policies: PolicyStore,
        hub: SessionHub,
        clock: Clock,
        timers: Timers,
        *,
        leadership: Leadership | None = None,
        interval_s: float = 1.0,
        batch: int = 1000,
        metrics: ControlPlaneMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        # Replicas on one database: only the leader runs passes (None: this one always).
        self._leadership = leadership
        self._leading = False
        self._scheduling = scheduling
        self._dataplanes = dataplanes
        self._hub = hub
        self._clock = clock
        self._timers = timers
        self._interval_s = interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        # Passes never overlap: each reads holds and capacity that the previous one wrote.
        self._pass_lock = asyncio.Lock()
        self._suspended_logged = False
        self._policies = policies
        self._policy: tuple[int, Policy] = (0, DEFAULT_POLICY)
        self._records: list[DataplaneRecord] | None = None
        self._fleet_read_at = 0.0
        self._fleet_changed = True
        # The free GPUs as the last pass left them (its placements taken), for a next pass
        # woken by new jobs alone; None: read them (see _place_batch).
        self._ledger: CapacityLedger | None = None
        self._ledger_read_at = 0.0
        self._capacity_shrank = 0   # wakes that said free GPUs may have shrunk, so far
        self._capacity_grew = 0   # wakes that said it grew (attempts ended), so far
        self._capacity_grew_read = 0   # ... as of the last capacity reading
        # What submits check a job against (never_fits): (taken at, pools, policy).
        self._submit_cache: tuple[float, list[PoolRecord], Policy] | None = None

    def wake(self, news: Wake = Wake.FLEET) -> None:
        """Run a pass soon, because of `news` (what the pass must read again)."""
        if news is Wake.CAPACITY:
            self._capacity_grew += 1
        elif news is Wake.FLEET:
            self._ledger = None
            self._capacity_shrank += 1
        self._fleet_changed = self._fleet_changed or news is Wake.FLEET
        self._wake.set()

    @property
    def leading(self) -> bool:
        """Whether this replica ran the last passes (tests and status)."""
        return self._leadership is None or self._leading

    def views(self, records: list[DataplaneRecord]) -> tuple[DataplaneView, ...]:
        """The dataplanes as placement sees them now (a tuple: the ledger's fleet plan is
        cached for this very object, so a pass's jobs do not compare fleets)."""
        now = self._clock.now()
        return tuple(
            DataplaneView(
                r.name,
                self._timers.health(r.last_heartbeat_at, now),
                r.connected,
                r.pools,
                r.unavailable_because,
            )
            for r in records
        )

    async def run(self) -> None:
        """Pass after pass until cancelled; a failing pass is logged and retried."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
            # that arrives as the wake-up fires, and the scheduler then never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if not await self._lead():
                continue
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed; retrying in %.1fs", self._interval_s)

    async def _lead(self) -> bool:
        """Whether this replica should run a pass now (taking the lead if nobody has it)."""
        if self._leadership is None:
            return True
        leading = await self._leadership.hold()
        if leading and not self._leading:
            # Count silence from now: agents of a dead leader need time to reconnect here.
            self._timers.started_at = self._clock.now()
            log.warning("this control plane now runs the scheduler")
        elif self._leading and not leading:
            log.warning("this control plane no longer runs the scheduler")
        self._leading = leading
        return leading

    async def tick(self) -> PassResult:
        async with self._pass_lock:
            return await self._tick()

    async def _tick(self) -> PassResult:
        records = await self._fleet()
        expired = await self._expire_lost(records)
        if expired:
            self.wake(Wake.CAPACITY)   # their GPUs are held no more (and a pass follows)
        now = self._clock.now()
        if any(r.drain_deadline is not None and r.drain_deadline <= now for r in records):
            await self._preempt_drained()
        placed, waiting = 0, 0
        while True:
            placed_now, waiting_now, full = await self._place_batch(records)
            placed += placed_now
            waiting += waiting_now
            if not full or placed_now == 0:
                break
            records = await self._fleet(refresh=True)
        return PassResult(placed, waiting, expired)

    async def _fleet(self, *, refresh: bool = False) -> list[DataplaneRecord]:
        """The dataplanes as the pass sees them. Read again when the fleet changed (a
        dataplane joined or left, pools changed, a cordon) and at least every interval
        (heartbeat ages, other replicas' agents); a pass woken by submits alone reuses
        them. Free capacity is read fresh by every pass regardless (pass_inputs)."""
        stale = time.monotonic() - self._fleet_read_at >= self._interval_s
        if refresh or stale or self._fleet_changed or self._records is None:
            self._fleet_changed = False
            self._fleet_read_at = time.monotonic()
            self._records = await self._dataplanes.list_dataplanes()
        return self._records

    async def current_policy(self, version: int | None = None) -> tuple[int, Policy]:
        """The policy in force and its version (`version`: already read by the caller). A
        pass reads it once, so every decision of the pass uses one version; documents are
        parsed once per version."""
        if version is None:
            version = await self._policies.current_version()
        if version != self._policy[0]:
            record = await self._policies.get(version)
            try:
                policy = DEFAULT_POLICY if record is None else parse_policy(record.document)
            except PolicyError as error:
                # Validated when applied; only a changed engine could refuse it now.
                log.error(
                    "policy version %d no longer parses, keeping version %d: %s",
                    version,
                    self._policy[0],
                    error,
                )
                return self._policy
            self._policy = (version, policy)
            log.info("routing policy version %d in force", version)
        return self._policy

    async def never_fits(self, demand: JobDemand) -> str | None:
        """Why no registered pool could ever run the job under the policy (refused at
        submit); None if one could. Decided on a view of the fleet at most
        SUBMIT_VIEW_MAX_AGE_S old (no reads per submit); a refusal is confirmed on fresh
        reads, so a dataplane that just joined is never missed."""
        pools, policy = await self._submit_view(fresh=False)
        if never_fits(demand, pools, policy) is None:
            return None
        pools, policy = await self._submit_view(fresh=True)
        return never_fits(demand, pools, policy)

    async def _submit_view(self, *, fresh: bool) -> tuple[list[PoolRecord], Policy]:
        cached = self._submit_cache
        if fresh or cached is None or time.monotonic() - cached[0] > SUBMIT_VIEW_MAX_AGE_S:
            _, policy = await self.current_policy()
            self._remember_pools(await self._dataplanes.list_dataplanes(), policy)
            cached = self._submit_cache
            assert cached is not None
        return cached[1], cached[2]

    def _remember_pools(self, records: list[DataplaneRecord], policy: Policy) -> None:
        pools = [pool for record in records for pool in record.pools]
        self._submit_cache = (time.monotonic(), pools, policy)

    async def quota_usage(self, policy: Policy) -> QuotaLedger:
        now = self._clock.now()
        spans = await self._scheduling.attempt_spans(now, list(policy.quotas))
        return QuotaLedger(
            {
                project: ProjectUsage(gpus, hours)
                for project, (gpus, hours) in usage_by_project(spans, now).items()
            }
        )

    async def explain(self, demand: JobDemand) -> tuple[int, Decision]:
        """The decision the scheduler would make for this job now, with every pool's reason."""
        version, policy = await self.current_policy()
        views = self.views(await self._dataplanes.list_dataplanes())
        ledger = ledger_for(*await self._scheduling.capacity())
        return version, place(demand, views, ledger, policy, await self.quota_usage(policy))

    async def _place_batch(self, records: list[DataplaneRecord]) -> tuple[int, int, bool]:
        # Free GPUs: the ledger the last pass left (its placements taken) while no news
        # says they shrank (pools changed, a cordon: Wake.FLEET) and for at most an
        # interval (other replicas' agents report elsewhere); else read again.
        if time.monotonic() - self._ledger_read_at >= self._interval_s:
            self._ledger = None
        shrank, grew = self._capacity_shrank, self._capacity_grew
        inputs = await self._scheduling.pass_inputs(self._batch, capacity=self._ledger is None)
        queued = inputs.queued
        if not queued:
            return 0, 0, False
        _, policy = await self.current_policy(inputs.policy_version)
        self._remember_pools(records, policy)
        views = self.views(records)
        if inputs.free is not None and inputs.holds is not None:
            self._ledger = ledger_for(inputs.free, inputs.holds)
            self._ledger_read_at = time.monotonic()
            self._capacity_grew_read = grew
        ledger = self._ledger
        assert ledger is not None
        # Kept for the next pass only once this one's plan is applied in full.
        self._ledger = None
        jobs = sorted(
            ((demand_from_json(job.job_id, job.spec), job) for job in queued),
            key=lambda pair: queue_key(policy, pair[0], pair[1].priority, pair[1].created_at),
        )
        orders, waiting = self._plan(jobs, views, ledger, policy, await self.quota_usage(policy))
        if len(orders) < len(jobs) and grew != self._capacity_grew_read:
            # Attempts ended since the ledger was read: it only undercounts, which is safe,
            # but a job it leaves waiting may fit now. Plan again on a fresh reading.
            self._capacity_grew_read = grew
            ledger = ledger_for(*await self._scheduling.capacity())
            self._ledger_read_at = time.monotonic()
            orders, waiting = self._plan(
                jobs, views, ledger, policy, await self.quota_usage(policy)
            )
        if not orders and not waiting:
            return 0, 0, False
        now = self._clock.now()
        created = await self._scheduling.apply(orders, waiting, now)
        # (Not if capacity news came meanwhile, nor if a job cancelled meanwhile kept
        # GPUs taken.)
        if shrank == self._capacity_shrank and len(created) == len(orders):
            self._ledger = ledger
        for attempt, spec in created:
            self._hub.send(attempt.dataplane, launch_message(attempt, spec))
            # Per job at debug: at thousands of placements a second, the pass line says it.
            log.debug(
                "placed %s on %s/%s", attempt.id, attempt.dataplane, attempt.pool,
                extra={"job_id": attempt.job_id, "attempt_id": attempt.id,
                       "dataplane": attempt.dataplane},
            )
        if created:
            log.info("placed %d jobs, %d wait", len(created), len(queued) - len(created))
        if self._metrics is not None:
            submitted_at = {job.job_id: job.created_at for job in queued}
            self._metrics.placed(
                (now - submitted_at[attempt.job_id]).total_seconds() for attempt, _ in created
            )
        self._hub.notify_jobs(attempt.job_id for attempt, _ in created)
        return len(created), len(queued) - len(created), len(queued) == self._batch

    def _plan(
        self,
        jobs: list[tuple[JobDemand, QueuedJob]],
        views: tuple[DataplaneView, ...],
        ledger: CapacityLedger,
        policy: Policy,
        usage: QuotaLedger,
    ) -> tuple[list[PlacementOrder], dict[str, str]]:
        """The pass's decisions, in queue order: what to place where, and why the others
        wait (only where the reason changed). Takes from the ledger and the quotas."""
        orders: list[PlacementOrder] = []
        waiting: dict[str, str] = {}
        for demand, job in jobs:
            decision = place(demand, views, ledger, policy, usage, explain=False)
            if decision.placement is None:
                if decision.summary != job.message:
                    waiting[job.job_id] = decision.summary
                continue
            ledger.take(decision.placement, demand.gpus)
            usage.take(demand.project, demand.gpus)
            chosen = decision.candidates[0]
            orders.append(
                PlacementOrder(
                    job.job_id,
                    chosen.dataplane,
                    chosen.pool,
                    demand.gpus,
                    f"placed on {chosen.dataplane}/{chosen.pool}: {chosen.reason}",
                    job.spec,
                )
            )
        return orders, waiting

    async def _preempt_drained(self) -> None:
        """Stop what still runs on dataplanes whose drain deadline passed (see
        domain/cordon.py); their jobs requeue when the agents confirm."""
        for attempt in await self._dataplanes.preempt_drained(self._clock.now()):
            log.warning("drain deadline of %s passed: stopping %s", attempt.dataplane, attempt.id)
            self._hub.send(attempt.dataplane, cancel_message(attempt.id, "drain deadline passed"))

    async def _expire_lost(self, records: list[DataplaneRecord]) -> int:
        now = self._clock.now()
        heard = [self._timers.heard_at(r.last_heartbeat_at) for r in records]
        if expiry_suspended(heard, now, self._timers.stale_after):
            if not self._suspended_logged and any(r.active_attempts for r in records):
                log.warning(
                    "no dataplane has been heard for %s: suspecting the control plane's own "
                    "network, so no attempt is declared lost",
                    self._timers.stale_after,
                )
                self._suspended_logged = True
            return 0
        self._suspended_logged = False
        lost = [
            r.name
            for r in records
            if r.active_attempts
            and self._timers.health(r.last_heartbeat_at, now) is DataplaneHealth.LOST
        ]
        if not lost:
            return 0
        changed = await self._dataplanes.expire(lost, now, now - self._timers.lost_after)
        if changed:
            log.warning("dataplanes %s lost: %d jobs requeued or failed", lost, len(changed))
            if self._metrics is not None:
                self._metrics.attempts_ended("lost", "DataplaneLost", len(changed))
            self._hub.notify_jobs(changed)
        return len(changed)
