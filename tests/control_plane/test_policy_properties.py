"""Properties of placement under random fleets, policies and job mixes.

An independent oracle (written here, not reusing the engine's checks) says which pools
may take a job under its rule. Placing jobs one after another in queue order, deducting
capacity and quota as the scheduler does:
- nothing is ever placed where the oracle forbids it, nor beyond free capacity or quota;
- nothing waits while the oracle finds a pool with room and the quota has room;
- the chosen pool is in the earliest tier with room, and the cheapest of that tier;
- explaining or not gives the same choice and summary, and a waiting job says why;
- never_fits says None exactly for the jobs an idle, healthy fleet would place.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.domain.phases import DataplaneHealth, PurchaseType
from control_plane.domain.placement import (
    DataplaneView,
    JobDemand,
    ledger_for,
    never_fits,
    place,
)
from control_plane.domain.policy import (
    DEFAULT_POLICY,
    CustomRegion,
    LatencyBudget,
    Match,
    Policy,
    ProjectUsage,
    Quota,
    QuotaLedger,
    Rule,
    estimated_rtt_ms,
    queue_key,
    rule_for,
)
from control_plane.domain.records import PoolRecord

# (region, cloud); "basement" is never declared, so no latency budget can reach it.
REGIONS = [
    ("us-east-1", "aws"),
    ("us-east-2", "aws"),
    ("us-west-2", "aws"),
    ("ap-northeast-1", "aws"),
    ("eu-west-1", "aws"),
    ("europe-west4", "gcp"),
    ("us-central1", "gcp"),
    ("westeurope", "azure"),
    ("dc1", "onprem"),
    ("basement", "onprem"),
]
CUSTOM = {"dc1": CustomRegion("dc1", "onprem", 40.0, -75.0)}
MODELS = ["H100", "A100", "L4", ""]
TIERS = list(PurchaseType)
PROJECTS = ["nlp", "vision", "ads"]
DOMAINS = ["development", "production"]
TASKS = ["train-llm", "train-vit", "eval-mmlu", "batch-infer"]
GLOBS = ["train-*", "*-mmlu", "batch-infer", "*", "eval-?"]
HEALTH = [(DataplaneHealth.HEALTHY, True)] * 4 + [
    (DataplaneHealth.STALE, True),
    (DataplaneHealth.LOST, True),
    (DataplaneHealth.HEALTHY, False),
]

T = TypeVar("T")

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def fleets(draw: st.DrawFn) -> list[DataplaneView]:
    views = []
    for index in range(draw(st.integers(1, 8))):
        region, cloud = draw(st.sampled_from(REGIONS))
        health, connected = draw(st.sampled_from(HEALTH))
        pools = []
        for number in range(draw(st.integers(1, 4))):
            total = draw(st.integers(0, 8))
            model = draw(st.sampled_from(MODELS)) if total else ""
            pools.append(
                PoolRecord(
                    f"dp{index}",
                    f"p{number}",
                    region,
                    cloud,
                    draw(st.sampled_from(TIERS)),
                    model,
                    draw(st.sampled_from([0, 24, 40, 80])) if total else 0,
                    total,
                    draw(st.just(total) | st.integers(0, total)),
                    draw(st.sampled_from(["", "nvlink"])),
                    draw(st.sampled_from([0.0, 0.25, 1.1, 2.2, 4.1, 6.9])),
                    draw(st.sampled_from([{}, {"rack": "a"}, {"rack": "b"}])),
                )
            )
        views.append(DataplaneView(f"dp{index}", health, connected, tuple(pools)))
    return views


CONSTRAINTS = [
    "regions",
    "clouds",
    "dataplanes",
    "gpu_models",
    "memory",
    "interconnects",
    "labels",
    "latency",
    "price",
]


def lists(items: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(items), min_size=1, unique=True).map(tuple)


@st.composite
def rules(draw: st.DrawFn, name: str) -> Rule:
    # A few hard constraints per rule, so that a fair share of jobs can be placed at all.
    kinds = draw(st.sets(st.sampled_from(CONSTRAINTS), max_size=2))

    def given(kind: str, value: st.SearchStrategy[T]) -> T | None:
        return draw(value) if kind in kinds else None

    origins = st.sampled_from(["", "us-east-1", "europe-west4", "dc1", "us-west-2"])
    budgets = st.sampled_from([5.0, 10.0, 20.0, 50.0, 90.0, 150.0])
    return Rule(
        name=name,
        match=Match(
            draw(st.none() | lists(PROJECTS)),
            draw(st.none() | lists(DOMAINS)),
            draw(st.none() | lists(GLOBS)),
            draw(st.sampled_from([{}, {"team": "x"}])),
        ),
        priority=draw(st.integers(-2, 2)),
        regions=given("regions", lists([r for r, _ in REGIONS])),
        clouds=given("clouds", lists(["aws", "gcp", "azure", "onprem"])),
        dataplanes=given("dataplanes", lists([f"dp{i}" for i in range(8)])),
        gpu_models=given("gpu_models", lists(["H100", "a100", "L4"])),
        min_gpu_memory_gb=given("memory", st.sampled_from([40, 80])) or 0,
        interconnects=given("interconnects", lists(["nvlink", "NVLink"])),
        pool_labels=given("labels", st.just({"rack": "a"})) or {},
        latency=given("latency", st.builds(LatencyBudget, budgets, origins)),
        tiers=tuple(draw(st.permutations(TIERS))[: draw(st.sampled_from([1, 2, 3, 3]))]),
        max_price_per_gpu_hour=given("price", st.sampled_from([1.0, 2.5, 5.0])),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    count = draw(st.integers(0, 4))
    quotas = draw(
        st.dictionaries(
            st.sampled_from(PROJECTS),
            st.builds(
                Quota,
                st.integers(0, 12) | st.none(),
                st.none() | st.sampled_from([0.0, 5.0, 50.0]),
            ),
            min_size=1,
        )
    )
    return Policy(
        rules=tuple(draw(rules(f"r{i}")) for i in range(count)),
        default=draw(rules("default")),
        regions=CUSTOM,
        measured_rtt_ms=draw(st.sampled_from([{}, {("dc1", "us-east-1"): 3.0}])),
        quotas=quotas,
    )


@st.composite
def jobs(draw: st.DrawFn, index: int) -> tuple[JobDemand, int, datetime]:
    gpus = draw(st.sampled_from([0, 1, 1, 2, 4, 8, 9]))
    demand = JobDemand(
        f"job{index}",
        gpus,
        draw(st.sampled_from(["", "", *MODELS])),
        draw(st.sampled_from([0, 0, 0, 40, 80])),
        draw(st.sampled_from(["", "", "", "", "", "dp0"])),
        draw(st.sampled_from([None, True, False])),
        draw(st.sampled_from(PROJECTS)),
        draw(st.sampled_from(DOMAINS)),
        draw(st.sampled_from(TASKS)),
        draw(st.sampled_from([{}, {"team": "x"}])),
        draw(st.sampled_from(["", "", "us-east-1", "europe-west4", "dc1", "basement"])),
    )
    created = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 5)))
    return demand, draw(st.integers(-1, 1)), created


job_mixes = st.integers(1, 25).flatmap(lambda n: st.tuples(*(jobs(i) for i in range(n))))
usages = st.dictionaries(
    st.sampled_from(PROJECTS),
    st.builds(ProjectUsage, st.integers(0, 10), st.sampled_from([0.0, 4.0, 60.0])),
    min_size=1,
)


# -- the oracle ---------------------------------------------------------------------------


def forbidden(policy: Policy, job: JobDemand, pool: PoolRecord) -> list[str]:
    """Every hard constraint of the job's rule and of the job that the pool breaks."""
    rule = rule_for(policy, job)
    broken = []
    if rule.regions is not None and pool.region not in rule.regions:
        broken.append("region")
    if rule.clouds is not None and pool.cloud not in rule.clouds:
        broken.append("cloud")
    if rule.dataplanes is not None and pool.dataplane not in rule.dataplanes:
        broken.append("dataplane")
    if job.gpus > 0:
        if rule.gpu_models is not None and pool.gpu_model.upper() not in [
            m.upper() for m in rule.gpu_models
        ]:
            broken.append("rule model")
        if pool.gpu_memory_gb < max(rule.min_gpu_memory_gb, job.min_gpu_memory_gb):
            broken.append("memory")
        if rule.interconnects is not None and pool.interconnect.upper() not in [
            i.upper() for i in rule.interconnects
        ]:
            broken.append("interconnect")
        if job.gpu_model and job.gpu_model.upper() != pool.gpu_model.upper():
            broken.append("job model")
    if any(pool.labels.get(k) != v for k, v in rule.pool_labels.items()):
        broken.append("pool labels")
    if rule.latency is not None:
        origin = job.origin_region or rule.latency.default_origin
        rtt = estimated_rtt_ms(policy, origin, pool.region) if origin else None
        if rtt is None or rtt > rule.latency.budget_ms:
            broken.append("latency")
    if pool.purchase_type not in rule.tiers:
        broken.append("tier")
    if job.allow_spot is False and pool.purchase_type is PurchaseType.SPOT:
        broken.append("spot hint")
    cap = rule.max_price_per_gpu_hour
    if cap is not None and pool.price_per_gpu_hour > cap:
        broken.append("price")
    if job.pin_dataplane and pool.dataplane != job.pin_dataplane:
        broken.append("pin")
    if job.gpus > pool.gpu_total:
        broken.append("size")
    return broken


def quota_room(
    policy: Policy, job: JobDemand, in_use: Mapping[str, int], hours: Mapping[str, float]
) -> bool:
    quota = policy.quotas.get(job.project)
    if quota is None or job.gpus == 0:
        return True
    limit = quota.concurrent_gpus
    if limit is not None and in_use.get(job.project, 0) + job.gpus > limit:
        return False
    return quota.gpu_hours_per_day is None or hours.get(job.project, 0.0) < quota.gpu_hours_per_day


def preference(rule: Rule, job: JobDemand, pool: PoolRecord) -> tuple[bool, int, float]:
    """CPU pools first for CPU jobs, then the rule's tier order, then the price."""
    wastes = job.gpus == 0 and pool.gpu_total > 0
    return wastes, rule.tiers.index(pool.purchase_type), pool.price_per_gpu_hour


# -- properties ---------------------------------------------------------------------------


@SETTINGS
@given(fleets(), policies(), job_mixes, usages)
def test_a_pass_keeps_every_constraint_tier_order_and_quota(
    views: list[DataplaneView],
    policy: Policy,
    mix: tuple[tuple[JobDemand, int, datetime], ...],
    usage: dict[str, ProjectUsage],
) -> None:
    ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
    quotas = QuotaLedger(usage)
    in_use = {project: u.gpus_in_use for project, u in usage.items()}
    hours = {project: u.gpu_hours_today for project, u in usage.items()}
    takes_work = {v.name: v.connected and v.health is DataplaneHealth.HEALTHY for v in views}
    all_pools = [p for v in views for p in v.pools]
    queue = sorted(mix, key=lambda j: queue_key(policy, j[0], j[1], j[2]))
    for job, _, _ in queue:
        rule = rule_for(policy, job)
        allowed = [
            p for p in all_pools if not forbidden(policy, job, p) and takes_work[p.dataplane]
        ]
        with_room = [p for p in allowed if ledger.free(p.key) >= job.gpus]
        room_in_quota = quota_room(policy, job, in_use, hours)

        fast = place(job, views, ledger, policy, quotas, explain=False)
        decision = place(job, views, ledger, policy, quotas)
        assert (fast.placement, fast.summary) == (decision.placement, decision.summary)
        assert (decision.rule, decision.priority) == (rule.name, rule.priority)
        assert sorted((c.dataplane, c.pool) for c in decision.candidates) == sorted(
            p.key for p in all_pools
        )

        if decision.placement is None:
            assert not (with_room and room_in_quota), decision.summary
            assert decision.summary.startswith("waiting: ") and len(decision.summary) > 10
            assert not any(c.chosen for c in decision.candidates)
            continue
        chosen = next(p for p in all_pools if p.key == decision.placement)
        assert chosen in with_room and room_in_quota, forbidden(policy, job, chosen)
        assert decision.candidates[0].chosen and decision.candidates[0].pool == chosen.name
        assert sum(c.chosen for c in decision.candidates) == 1
        assert preference(rule, job, chosen) == min(preference(rule, job, p) for p in with_room)

        ledger.take(chosen.key, job.gpus)
        quotas.take(job.project, job.gpus)
        in_use[job.project] = in_use.get(job.project, 0) + job.gpus
        assert ledger.free(chosen.key) >= 0
    for project, quota in policy.quotas.items():
        before = usage.get(project, ProjectUsage()).gpus_in_use
        if quota.concurrent_gpus is not None and in_use.get(project, 0) > before:
            assert in_use[project] <= quota.concurrent_gpus


@SETTINGS
@given(fleets(), policies(), job_mixes)
def test_never_fits_is_none_exactly_for_jobs_an_idle_fleet_places(
    views: list[DataplaneView], policy: Policy, mix: tuple[tuple[JobDemand, int, datetime], ...]
) -> None:
    idle = [DataplaneView(v.name, DataplaneHealth.HEALTHY, True, v.pools) for v in views]
    pools = [p for v in idle for p in v.pools]
    for job, _, _ in mix:
        ledger = ledger_for({p.key: p.gpu_total for p in pools}, {})
        decision = place(job, idle, ledger, policy, QuotaLedger())
        message = never_fits(job, pools, policy)
        assert (message is None) == (decision.placement is not None), (message, decision.summary)
        if message is not None:
            # No state of the fleet can help: full capacity, nothing used, all healthy.
            assert message


@SETTINGS
@given(fleets(), job_mixes)
def test_with_no_document_applied_only_the_jobs_own_demands_count(
    views: list[DataplaneView], mix: tuple[tuple[JobDemand, int, datetime], ...]
) -> None:
    ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
    healthy = [
        p for v in views if v.connected and v.health is DataplaneHealth.HEALTHY for p in v.pools
    ]
    for job, _, _ in mix:
        decision = place(job, views, ledger)
        assert (decision.rule, decision.priority) == ("default", 0)
        room = [
            p
            for p in healthy
            if not forbidden(DEFAULT_POLICY, job, p) and ledger.free(p.key) >= job.gpus
        ]
        assert (decision.placement is not None) == bool(room)
        if decision.placement is not None:
            ledger.take(decision.placement, job.gpus)
