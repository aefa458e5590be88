"""Where a job goes under the routing policy, and why every other pool was not chosen.

The job falls under the first rule that matches it (else the policy's default rule). A pool
can take it when it keeps the rule's hard constraints (residency, latency, GPU model,
memory, interconnect, pool labels, tier, price cap) and the job's own (pin, model, memory,
size, spot hint), its dataplane is connected and healthy, the project's quota has room, and
it has enough free GPUs now. Among those: the rule's tiers in order (a job bursts to the
next tier only when the earlier ones have no room), then the lower price, then the pool
left with the most free GPUs, so a burst spreads. CPU-only jobs prefer CPU pools.

A decision can list every pool, chosen or excluded with its reason (`explain=True`, the
default); the scheduler turns that off and gets the same choice and summary, faster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.domain.phases import DataplaneHealth, PurchaseType
from control_plane.domain.policy.constraints import (
    CAPACITY,
    HEALTH,
    NOT_PREFERRED,
    QUOTA,
    Exclusion,
    first_exclusion,
    job_exclusion,
    origin_of,
    rule_exclusion,
)
from control_plane.domain.policy.matching import rule_for
from control_plane.domain.policy.model import DEFAULT_POLICY, DEFAULT_RULE_NAME, Policy, Rule
from control_plane.domain.policy.plan import FleetPlan, Shape, choose
from control_plane.domain.policy.quota import QuotaLedger, quota_never_allows
from control_plane.domain.records import PoolRecord

PoolKey = tuple[str, str]  # (dataplane, pool)

SUMMARY_REASONS = 4  # distinct reasons a waiting summary names


@dataclass(frozen=True)
class JobDemand:
    job_id: str
    gpus: int
    gpu_model: str = ""  # empty: any model
    min_gpu_memory_gb: int = 0
    pin_dataplane: str = ""
    allow_spot: bool | None = None  # None: the policy's rule decides
    project: str = ""
    domain: str = ""
    name: str = ""  # the task name rules match with globs
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    origin_region: str = ""  # where the job's data lives, for latency budgets


@dataclass(frozen=True)
class DataplaneView:
    name: str
    health: DataplaneHealth
    connected: bool
    pools: tuple[PoolRecord, ...]
    unavailable_because: str = ""   # cordoned or draining: why it takes no new work


@dataclass(frozen=True)
class Candidate:
    dataplane: str
    pool: str
    chosen: bool
    reason: str
    region: str = ""
    purchase_type: PurchaseType | None = None


@dataclass(frozen=True)
class Decision:
    placement: PoolKey | None
    candidates: tuple[Candidate, ...]  # the chosen one first; empty when not explaining a wait
    rule: str = DEFAULT_RULE_NAME  # the rule the job fell under
    priority: int = 0  # that rule's priority
    wait_reason: str = ""  # why it waits (empty when placed)

    @property
    def summary(self) -> str:
        """One line: where it goes, or why it waits."""
        if self.placement is not None:
            return f"placed on {self.placement[0]}/{self.placement[1]}"
        if self.wait_reason:
            return f"waiting: {self.wait_reason}"
        if not self.candidates:
            return "waiting: no dataplane is registered"
        return "waiting: " + _join_reasons(sorted({c.reason for c in self.candidates}))


class CapacityLedger:
    """Free GPUs per pool during one scheduling pass; placing deducts at once (a hold).

    It also keeps what the pass computes once for all its jobs (see policy/plan.py), which
    relies on free GPUs only shrinking while the ledger lives.
    """

    def __init__(self, free: dict[PoolKey, int]) -> None:
        self._free = dict(free)
        self._plans: dict[int, tuple[tuple[DataplaneView, ...], FleetPlan]] = {}

    def free(self, key: PoolKey) -> int:
        return self._free.get(key, 0)

    def take(self, key: PoolKey, gpus: int) -> None:
        self._free[key] = self.free(key) - gpus
        if gpus < 0:
            self._plans.clear()  # given back: what the plans remember no longer holds

    def plan(self, policy: Policy, dataplanes: Sequence[DataplaneView]) -> FleetPlan:
        views = dataplanes if isinstance(dataplanes, tuple) else tuple(dataplanes)
        cached = self._plans.get(id(policy))
        if cached is not None and cached[1].policy is policy:
            if cached[0] is views:
                return cached[1]
            if cached[0] == views:
                # Equal views of a later pass (the ledger outlived its pass): keep these, so
                # the pass's other jobs compare by identity, not field by field.
                self._plans[id(policy)] = (views, cached[1])
                return cached[1]
        plan = FleetPlan(
            policy, [(pool, _unavailable(view)) for view in views for pool in view.pools]
        )
        self._plans[id(policy)] = (views, plan)
        return plan


def ledger_for(free: Mapping[PoolKey, int], holds: Mapping[PoolKey, int]) -> CapacityLedger:
    """Reported free GPUs minus the holds: GPUs placed that no heartbeat has counted yet.

    Both must come from one snapshot of the registry, or a heartbeat landing between two
    reads would count the same GPUs as free twice.
    """
    return CapacityLedger({key: max(0, n - holds.get(key, 0)) for key, n in free.items()})


def place(
    demand: JobDemand,
    dataplanes: Sequence[DataplaneView],
    ledger: CapacityLedger,
    policy: Policy = DEFAULT_POLICY,
    usage: QuotaLedger | None = None,
    *,
    explain: bool = True,
) -> Decision:
    """Choose a pool for the job; the caller deducts from the ledger (and the quota ledger)
    when it applies the plan. Without `usage`, every project counts as using nothing."""
    plan = ledger.plan(policy, dataplanes)
    index, rule = plan.rule(demand)
    key = plan.shape_key(index, rule, demand)
    shape = plan.shape(key, rule, demand)
    quota: str | None = None
    pick: tuple[PoolKey, int] | None = None
    if shape.pools == 0:
        wait = _static_wait(plan, key, rule, demand)
    else:
        quota = (usage or _NO_USAGE).blocked(policy, demand.project, demand.gpus)
        pick = None if quota else choose(shape, demand.gpus, ledger._free)
        wait = quota or ("" if pick else _capacity_wait(plan, key, shape, rule, demand))
    placement = pick[0] if pick else None
    if explain:
        candidates = _explain(plan, key, rule, demand, ledger, pick, quota)
    elif placement is not None:
        candidates = (_chosen(plan.pool_by_key[placement], rule, ledger),)
    else:
        candidates = ()
    return Decision(placement, candidates, rule.name, rule.priority, wait)


def never_fits(
    demand: JobDemand, pools: Sequence[PoolRecord], policy: Policy = DEFAULT_POLICY
) -> str | None:
    """Why no registered pool could ever run the job under the policy (rejected at submit);
    None if one could once capacity, health and quota use allow."""
    if not pools:
        return "no dataplane has registered with the control plane yet"
    rule = rule_for(policy, demand)
    over_quota = quota_never_allows(policy.quotas.get(demand.project), demand.project, demand.gpus)
    if over_quota is not None:
        return f"quota: {over_quota}"
    if any(first_exclusion(policy, rule, demand, pool) is None for pool in pools):
        return None
    for_job = [pool for pool in pools if job_exclusion(demand, pool) is None]
    if not for_job:
        return _job_never_fits(demand, pools)
    origin = origin_of(rule, demand)
    by_reason: dict[tuple[int, str], list[str]] = {}
    for pool in for_job:
        excluded = rule_exclusion(policy, rule, origin, demand.gpus > 0, pool)
        if excluded is not None:
            by_reason.setdefault((-excluded.stage, excluded.text), []).append(
                f"{pool.dataplane}/{pool.name}"
            )
    reasons = [
        f"{text} ({', '.join(where[:3])}{', ...' if len(where) > 3 else ''})"
        for (_, text), where in sorted(by_reason.items())
    ]
    count = "1 pool" if len(for_job) == 1 else f"{len(for_job)} pools"
    return f"rule {rule.name} excludes every pool that could run this job ({count}): " + (
        _join_reasons(reasons)
    )


def static_mismatch(demand: JobDemand, pool: PoolRecord) -> str | None:
    """Why this pool can never run the job by the job's own demands; None if it could."""
    excluded = job_exclusion(demand, pool)
    return None if excluded is None else excluded.text


# -- internals ----------------------------------------------------------------------------

_NO_USAGE = QuotaLedger()  # only read


def _unavailable(view: DataplaneView) -> Exclusion | None:
    if view.unavailable_because:
        return Exclusion(HEALTH, "{}", (view.unavailable_because,))
    if not view.connected:
        return Exclusion(HEALTH, "dataplane is not connected")
    if view.health is not DataplaneHealth.HEALTHY:
        return Exclusion(HEALTH, "dataplane is {}", (view.health.value,))
    return None


def _static_wait(plan: FleetPlan, key: tuple[object, ...], rule: Rule, demand: JobDemand) -> str:
    summary = plan.summaries.get(key)
    if summary is None:
        exclusions = {e for e in plan.exclusions(key, rule, demand, keep=False) if e is not None}
        if not exclusions:
            summary = "no dataplane is registered"
        else:
            ranked = sorted({(-e.stage, e.text) for e in exclusions})
            summary = _join_reasons([text for _, text in ranked])
        plan.summaries[key] = summary
    return summary


def _capacity_wait(
    plan: FleetPlan, key: tuple[object, ...], shape: Shape, rule: Rule, demand: JobDemand
) -> str:
    capacity_key = (*key, "capacity")
    summary = plan.summaries.get(capacity_key)
    if summary is None:
        pools = "1 pool fits" if shape.pools == 1 else f"{shape.pools} pools fit"
        gpus = "1 GPU" if demand.gpus == 1 else f"{demand.gpus} GPUs"
        summary = plan.summaries[capacity_key] = (
            f"no capacity: {pools} this job under rule {rule.name}, none with {gpus} free now"
        )
    return summary


def _explain(
    plan: FleetPlan,
    key: tuple[object, ...],
    rule: Rule,
    demand: JobDemand,
    ledger: CapacityLedger,
    pick: tuple[PoolKey, int] | None,
    quota: str | None,
) -> tuple[Candidate, ...]:
    chosen: list[Candidate] = []
    fitting: list[Candidate] = []
    excluded: list[Candidate] = []
    best = plan.pool_by_key[pick[0]] if pick else None
    for (pool, _), exclusion in zip(plan.pools, plan.exclusions(key, rule, demand), strict=True):
        if exclusion is None and quota is not None:
            exclusion = Exclusion(QUOTA, "{}", (quota,))
        elif exclusion is None and demand.gpus > ledger.free(pool.key):
            exclusion = Exclusion(
                CAPACITY,
                "{} of {} GPUs free < {} asked"
                if pool.gpu_node_free is None
                else "{} of {} GPUs free on one node < {} asked",
                (ledger.free(pool.key), pool.gpu_total, demand.gpus),
            )
        if exclusion is None and best is not None and pool.key == best.key:
            chosen.append(_chosen(pool, rule, ledger))
        elif exclusion is None and best is not None:
            reason = _not_preferred(pool, best, rule).text
            fitting.append(_candidate(pool, False, reason))
        else:
            reason = exclusion.text if exclusion is not None else "fits"
            excluded.append(_candidate(pool, False, reason))
    return (*chosen, *fitting, *excluded)


def _not_preferred(pool: PoolRecord, best: PoolRecord, rule: Rule) -> Exclusion:
    if rule.tiers.index(pool.purchase_type) > rule.tiers.index(best.purchase_type):
        return Exclusion(
            NOT_PREFERRED,
            "fits, but the {} tier waits until {} is full",
            (pool.purchase_type.value, best.purchase_type.value),
        )
    return Exclusion(NOT_PREFERRED, "fits, but {}/{} is preferred", (best.dataplane, best.name))


def _chosen(pool: PoolRecord, rule: Rule, ledger: CapacityLedger) -> Candidate:
    reason = (
        f"{pool.purchase_type.value} tier, ${pool.price_per_gpu_hour:.2f}/GPU-hour, "
        f"{ledger.free(pool.key)} of {pool.gpu_total} GPUs free (rule {rule.name})"
    )
    return _candidate(pool, True, reason)


def _candidate(pool: PoolRecord, chosen: bool, reason: str) -> Candidate:
    return Candidate(pool.dataplane, pool.name, chosen, reason, pool.region, pool.purchase_type)


def _join_reasons(reasons: Sequence[str]) -> str:
    shown = "; ".join(reasons[:SUMMARY_REASONS])
    return shown + ("; ..." if len(reasons) > SUMMARY_REASONS else "")


def _job_never_fits(demand: JobDemand, pools: Sequence[PoolRecord]) -> str:
    """The job's own demands exclude every pool, whatever the policy: name the closest miss."""
    if demand.pin_dataplane and all(p.dataplane != demand.pin_dataplane for p in pools):
        return f"routing.pin_dataplane: no dataplane named {demand.pin_dataplane!r} is registered"
    if demand.gpus > 0 and demand.gpu_model:
        same_model = [p for p in pools if p.gpu_model.lower() == demand.gpu_model.lower()]
        if not same_model:
            models = ", ".join(sorted({p.gpu_model for p in pools if p.gpu_model})) or "none"
            return (
                f"resources.gpu_model: no dataplane has GPU model {demand.gpu_model!r} "
                f"(models in the fleet: {models})"
            )
        pools = same_model
    largest = max(pools, key=lambda p: p.gpus_per_job)
    if demand.gpus > largest.gpus_per_job:
        model = f" of model {demand.gpu_model}" if demand.gpu_model else ""
        where = "on one node " if largest.gpu_node_size is not None else ""
        return (
            f"resources.gpus: no pool has {demand.gpus} GPUs{model} "
            f"(largest: {largest.gpus_per_job} {where}in {largest.dataplane}/{largest.name})"
        )
    reasons = sorted({f"{p.dataplane}/{p.name}: {static_mismatch(demand, p)}" for p in pools})
    return "no pool can run this job: " + "; ".join(reasons)
