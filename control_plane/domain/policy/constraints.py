"""Why a pool can never take a job under a rule: the static half of placement.

Each check returns an `Exclusion`: a stage (how far the pool got through the checks, so an
explanation can lead with the pools that came closest) and the reason as a template with
its arguments, formatted only when someone reads it. The rule's checks and the job's own
checks are separate functions, so placement can filter pools per rule once per pass and
per job shape after that; interleaved stages keep the first failing check the same as if
they ran as one list.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Protocol

from control_plane.domain.phases import PurchaseType
from control_plane.domain.policy.model import LatencyBudget, Policy, Rule
from control_plane.domain.policy.regions import estimated_rtt_ms
from control_plane.domain.records import PoolRecord

# Stages, in the order the checks run.
PIN, REGION, CLOUD, DATAPLANE, LATENCY = 1, 2, 3, 4, 5
RULE_MODEL, JOB_MODEL, RULE_MEMORY, JOB_MEMORY, INTERCONNECT, POOL_LABELS = 6, 7, 8, 9, 10, 11
SIZE, TIER, JOB_SPOT, PRICE = 12, 13, 14, 15
HEALTH, QUOTA, CAPACITY, NOT_PREFERRED = 20, 21, 22, 30


class Exclusion(NamedTuple):
    stage: int
    template: str
    args: tuple[object, ...] = ()

    @property
    def text(self) -> str:
        return self.template.format(*self.args)


class Demand(Protocol):
    """What the checks read of a job (placement's JobDemand has these)."""

    @property
    def gpus(self) -> int: ...
    @property
    def gpu_model(self) -> str: ...
    @property
    def min_gpu_memory_gb(self) -> int: ...
    @property
    def pin_dataplane(self) -> str: ...
    @property
    def allow_spot(self) -> bool | None: ...
    @property
    def origin_region(self) -> str: ...


def origin_of(rule: Rule, demand: Demand) -> str:
    """The region the latency budget counts from: the job's, else the rule's default."""
    if demand.origin_region:
        return demand.origin_region
    return rule.latency.default_origin if rule.latency is not None else ""


def rule_exclusion(
    policy: Policy, rule: Rule, origin: str, gpu_job: bool, pool: PoolRecord
) -> Exclusion | None:
    """The first of the rule's hard constraints the pool breaks; None if it keeps them all."""
    name = rule.name
    if rule.regions is not None and pool.region not in rule.regions:
        return Exclusion(REGION, "region {} not allowed by rule {}", (pool.region, name))
    if rule.clouds is not None and pool.cloud not in rule.clouds:
        return Exclusion(CLOUD, "cloud {} not allowed by rule {}", (pool.cloud, name))
    if rule.dataplanes is not None and pool.dataplane not in rule.dataplanes:
        return Exclusion(DATAPLANE, "dataplane {} not allowed by rule {}", (pool.dataplane, name))
    if rule.latency is not None:
        latency = _latency_exclusion(policy, rule.latency, name, origin, pool)
        if latency is not None:
            return latency
    if gpu_job:
        gpu = _gpu_exclusion(rule, pool)
        if gpu is not None:
            return gpu
    for key, value in rule.pool_labels.items():
        if pool.labels.get(key) != value:
            return Exclusion(
                POOL_LABELS, "pool lacks label {}={} required by rule {}", (key, value, name)
            )
    if pool.purchase_type not in rule.tiers:
        return Exclusion(TIER, "{} not allowed by rule {}", (pool.purchase_type.value, name))
    cap = rule.max_price_per_gpu_hour
    if cap is not None and pool.price_per_gpu_hour > cap:
        return Exclusion(
            PRICE, "${:.2f}/GPU-hour > cap ${:.2f} (rule {})", (pool.price_per_gpu_hour, cap, name)
        )
    return None


def job_exclusion(demand: Demand, pool: PoolRecord) -> Exclusion | None:
    """The first of the job's own demands the pool cannot meet; None if it meets them all."""
    if demand.pin_dataplane and pool.dataplane != demand.pin_dataplane:
        return Exclusion(PIN, "job is pinned to dataplane {}", (demand.pin_dataplane,))
    if demand.gpus > 0:
        if demand.gpu_model and pool.gpu_model.lower() != demand.gpu_model.lower():
            return Exclusion(
                JOB_MODEL, "GPU model {} is not {}", (pool.gpu_model or "none", demand.gpu_model)
            )
        if pool.gpu_memory_gb < demand.min_gpu_memory_gb:
            return Exclusion(
                JOB_MEMORY,
                "{} GB per GPU < {} GB asked",
                (pool.gpu_memory_gb, demand.min_gpu_memory_gb),
            )
    if demand.gpus > pool.gpu_total:
        return Exclusion(SIZE, "pool has {} GPUs in all < {} asked", (pool.gpu_total, demand.gpus))
    if demand.gpus > pool.gpus_per_job:
        return Exclusion(
            SIZE, "largest node has {} GPUs < {} asked", (pool.gpus_per_job, demand.gpus)
        )
    if demand.allow_spot is False and pool.purchase_type is PurchaseType.SPOT:
        return Exclusion(JOB_SPOT, "spot capacity refused by the job")
    return None


def first_exclusion(
    policy: Policy, rule: Rule, demand: Demand, pool: PoolRecord
) -> Exclusion | None:
    """The first constraint, the rule's or the job's, that the pool breaks."""
    by_rule = rule_exclusion(policy, rule, origin_of(rule, demand), demand.gpus > 0, pool)
    by_job = job_exclusion(demand, pool)
    if by_rule is None or by_job is None:
        return by_rule or by_job
    return by_rule if by_rule.stage < by_job.stage else by_job


def _latency_exclusion(
    policy: Policy, latency: LatencyBudget, name: str, origin: str, pool: PoolRecord
) -> Exclusion | None:
    budget = latency.budget_ms
    if not origin:
        return Exclusion(
            LATENCY,
            "the job names no origin region and rule {} has a latency budget of {:g} ms "
            "without a default origin",
            (name, budget),
        )
    rtt = estimated_rtt_ms(policy, origin, pool.region)
    if rtt is None:
        return Exclusion(
            LATENCY,
            "RTT from {} to region {} unknown (rule {} has a latency budget; declare the "
            "region in the policy)",
            (origin, pool.region, name),
        )
    if rtt > budget:
        template = "RTT {:.0f} ms > budget {:g} ms (from {}, rule {})"
        return Exclusion(LATENCY, template, (rtt, budget, origin, name))
    return None


def _gpu_exclusion(rule: Rule, pool: PoolRecord) -> Exclusion | None:
    name = rule.name
    if rule.gpu_models is not None and pool.gpu_model.lower() not in _lowered(rule.gpu_models):
        return Exclusion(
            RULE_MODEL,
            "GPU model {} not allowed by rule {} (allows {})",
            (pool.gpu_model or "none", name, ", ".join(rule.gpu_models)),
        )
    if pool.gpu_memory_gb < rule.min_gpu_memory_gb:
        return Exclusion(
            RULE_MEMORY,
            "{} GB per GPU < {} GB required by rule {}",
            (pool.gpu_memory_gb, rule.min_gpu_memory_gb, name),
        )
    if rule.interconnects is not None and pool.interconnect.lower() not in _lowered(
        rule.interconnects
    ):
        return Exclusion(
            INTERCONNECT,
            "interconnect {} not allowed by rule {} (allows {})",
            (pool.interconnect or "none", name, ", ".join(rule.interconnects)),
        )
    return None


@lru_cache(maxsize=1024)
def _lowered(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(name.lower() for name in names)
