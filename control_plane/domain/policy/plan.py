"""What one scheduling pass knows before it places anything, computed once per pass.

For each rule (and origin region) the pools that keep the rule's constraints and belong to
a dataplane that takes work; for each shape of job under that rule (GPU count, model,
memory, pin, spot hint) those pools grouped in preference order. Placing a job then only
reads free GPUs: the first group with a pool that fits wins, inside it the pool left with
the most free GPUs (so a burst spreads), ties by name.

Free capacity only shrinks during a pass, so each group remembers the most free GPUs it
had at its last scan: a job bigger than that skips the group without looking. That keeps a
long queue of jobs that wait cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from control_plane.domain.policy.constraints import (
    Demand,
    Exclusion,
    first_exclusion,
    job_exclusion,
    origin_of,
    rule_exclusion,
)
from control_plane.domain.policy.matching import JobFacts, rule_index
from control_plane.domain.policy.model import Policy, Rule
from control_plane.domain.records import PoolRecord

PoolKey = tuple[str, str]

_NO_BOUND = 1 << 62


class PoolGroup:
    """Pools of one preference step (tier, price), ordered by name; see module doc."""

    __slots__ = ("bound", "keys", "tier_rank")

    def __init__(self, keys: list[PoolKey], tier_rank: int) -> None:
        self.keys = keys
        self.tier_rank = tier_rank
        self.bound = _NO_BOUND  # at least the most free GPUs of any pool here


@dataclass(frozen=True)
class Shape:
    """The preference-ordered groups of the pools a job of this shape may use."""

    groups: tuple[PoolGroup, ...]
    pools: int  # how many pools in all


class FleetPlan:
    def __init__(
        self, policy: Policy, pools: Sequence[tuple[PoolRecord, Exclusion | None]]
    ) -> None:
        """`pools` in the fleet's order, each with why its dataplane takes no work (or None)."""
        self.policy = policy
        self.pools = pools
        self.pool_by_key = {pool.key: pool for pool, _ in pools}
        self._by_rule: dict[tuple[int, str, bool], list[tuple[PoolRecord, int]]] = {}
        self._shapes: dict[tuple[object, ...], Shape] = {}
        self._exclusions: dict[tuple[object, ...], list[Exclusion | None]] = {}
        self.summaries: dict[tuple[object, ...], str] = {}  # placement's cache of static waits

    def rule(self, job: JobFacts) -> tuple[int, Rule]:
        index = rule_index(self.policy, job)
        return index, self.policy.default if index < 0 else self.policy.rules[index]

    def shape_key(self, index: int, rule: Rule, demand: Demand) -> tuple[object, ...]:
        return (
            index,
            origin_of(rule, demand) if rule.latency is not None else "",
            demand.gpus,
            demand.gpu_model.lower() if demand.gpus else "",
            demand.min_gpu_memory_gb if demand.gpus else 0,
            demand.pin_dataplane,
            demand.allow_spot is False,
        )

    def shape(self, key: tuple[object, ...], rule: Rule, demand: Demand) -> Shape:
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._build_shape(rule, demand)
        return shape

    def exclusions(
        self, key: tuple[object, ...], rule: Rule, demand: Demand, *, keep: bool = True
    ) -> list[Exclusion | None]:
        """For each pool in fleet order, why it can never take this job in this pass.
        Kept for the next job of the same shape unless told otherwise (a pass that does not
        explain needs them once per shape, and keeping them all costs garbage-collector time)."""
        found = self._exclusions.get(key)
        if found is None:
            found = [
                first_exclusion(self.policy, rule, demand, pool) or unavailable
                for pool, unavailable in self.pools
            ]
            if keep:
                self._exclusions[key] = found
        return found

    def _build_shape(self, rule: Rule, demand: Demand) -> Shape:
        origin = origin_of(rule, demand)
        allowed = self._rule_pools(rule, origin, demand.gpus > 0)
        cpu_job = demand.gpus == 0
        fits = [
            (cpu_job and pool.gpu_total > 0, rank, pool.price_per_gpu_hour, pool.key)
            for pool, rank in allowed
            if job_exclusion(demand, pool) is None
        ]
        fits.sort()
        groups = tuple(
            PoolGroup([item[3] for item in items], step[1])
            for step, items in groupby(fits, key=lambda item: item[:3])
        )
        return Shape(groups, len(fits))

    def _rule_pools(self, rule: Rule, origin: str, gpu_job: bool) -> list[tuple[PoolRecord, int]]:
        key = (id(rule), origin, gpu_job)
        allowed = self._by_rule.get(key)
        if allowed is None:
            rank = {tier: position for position, tier in enumerate(rule.tiers)}
            allowed = self._by_rule[key] = [
                (pool, rank[pool.purchase_type])
                for pool, unavailable in self.pools
                if unavailable is None
                and rule_exclusion(self.policy, rule, origin, gpu_job, pool) is None
            ]
        return allowed


def choose(shape: Shape, gpus: int, free: Mapping[PoolKey, int]) -> tuple[PoolKey, int] | None:
    """The pool to take and its tier rank; None when no pool of the shape has room now."""
    for group in shape.groups:
        if gpus > group.bound:
            continue
        best: PoolKey | None = None
        best_free = bound = -_NO_BOUND
        for key in group.keys:
            now = free.get(key, 0)
            if now > bound:
                bound = now
            if now >= gpus and now > best_free:
                best, best_free = key, now
        group.bound = bound
        if best is not None:
            return best, group.tier_rank
    return None
