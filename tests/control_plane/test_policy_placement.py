"""Placement under a routing policy: each constraint, tier, cap, budget and quota on a small
fleet built here, with the words a person reads in the explanation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from textwrap import indent

import pytest

from control_plane.domain.phases import DataplaneHealth, PurchaseType
from control_plane.domain.placement import (
    Candidate,
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
    ProjectUsage,
    QuotaLedger,
    estimated_rtt_ms,
    parse_policy,
    queue_key,
    queue_priority,
    rule_for,
)
from control_plane.domain.records import PoolRecord

R, OD, SPOT = PurchaseType.RESERVED, PurchaseType.ON_DEMAND, PurchaseType.SPOT

PREAMBLE = """\
regions:
  us-east-dc1: {cloud: onprem, latitude: 39.04, longitude: -77.49}
"""


def pool(
    dp: str,
    name: str,
    region: str,
    cloud: str,
    tier: PurchaseType,
    model: str,
    mem: int,
    price: float,
    *,
    total: int = 8,
    free: int | None = None,
    interconnect: str = "",
    labels: dict[str, str] | None = None,
) -> PoolRecord:
    return PoolRecord(
        dp,
        name,
        region,
        cloud,
        tier,
        model,
        mem,
        total,
        total if free is None else free,
        interconnect,
        price,
        labels or {},
    )


def standard_pools(**free: int) -> list[PoolRecord]:
    """An on-prem site, an AWS region on demand and a GCP region on spot; free GPUs by
    pool (e.g. onprem_h100=0)."""
    pools = [
        pool(
            "onprem",
            "h100",
            "us-east-dc1",
            "onprem",
            R,
            "H100",
            80,
            1.10,
            interconnect="nvlink",
            labels={"rack": "a"},
        ),
        pool("aws", "a100", "us-east-1", "aws", OD, "A100", 80, 4.10, labels={"rack": "b"}),
        pool("aws", "h100", "us-east-1", "aws", OD, "H100", 80, 6.90, interconnect="nvlink"),
        pool("aws", "cpu", "us-east-1", "aws", OD, "", 0, 0.0, total=0),
        pool("gcp", "l4", "europe-west4", "gcp", SPOT, "L4", 24, 0.25),
        pool("gcp", "h100", "europe-west4", "gcp", SPOT, "H100", 80, 2.20),
    ]
    return [replace(p, gpu_free=free.get(f"{p.dataplane}_{p.name}", p.gpu_free)) for p in pools]


def views_of(pools: list[PoolRecord], **health: DataplaneHealth) -> list[DataplaneView]:
    names = list(dict.fromkeys(p.dataplane for p in pools))
    return [
        DataplaneView(
            n,
            health.get(n, DataplaneHealth.HEALTHY),
            True,
            tuple(p for p in pools if p.dataplane == n),
        )
        for n in names
    ]


def one_rule(body: str, **extra: str) -> Policy:
    """A policy of one catch-all rule named r with this body (YAML lines)."""
    document = PREAMBLE + "".join(f"{k}: {v}\n" for k, v in extra.items())
    document += "rules:\n  - name: r\n    match: {}\n" + indent(body.strip() + "\n", "    ")
    return parse_policy(document)


def decide(
    demand: JobDemand,
    policy: Policy = DEFAULT_POLICY,
    pools: list[PoolRecord] | None = None,
    usage: QuotaLedger | None = None,
) -> Decision:
    views = views_of(pools if pools is not None else standard_pools())
    ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
    decision = place(demand, views, ledger, policy, usage)
    fast = place(demand, views, ledger, policy, usage, explain=False)
    assert (fast.placement, fast.summary) == (decision.placement, decision.summary)
    return decision


def reason_for(decision: Decision, key: str) -> str:
    dp, name = key.split("/")
    return next(c.reason for c in decision.candidates if (c.dataplane, c.pool) == (dp, name))


def where(decision: Decision) -> str | None:
    return None if decision.placement is None else "/".join(decision.placement)


H100 = JobDemand("j", 1, "H100")
ANY = JobDemand("j", 1)


@pytest.mark.parametrize(
    ("body", "demand", "chosen", "excluded", "reason"),
    [
        (
            "regions: [europe-west4]",
            H100,
            "gcp/h100",
            "onprem/h100",
            "region us-east-dc1 not allowed by rule r",
        ),
        ("clouds: [aws]", H100, "aws/h100", "onprem/h100", "cloud onprem not allowed by rule r"),
        ("dataplanes: [gcp]", H100, "gcp/h100", "aws/h100", "dataplane aws not allowed by rule r"),
        (
            "gpu_models: [A100, l4]",
            ANY,
            "aws/a100",
            "onprem/h100",
            "GPU model H100 not allowed by rule r (allows A100, l4)",
        ),
        (
            "gpu_models: [A100, l4]\ntiers: [spot]",
            ANY,
            "gcp/l4",
            "gcp/h100",
            "GPU model H100 not allowed by rule r (allows A100, l4)",
        ),
        (
            "min_gpu_memory_gb: 40\ntiers: [spot]",
            ANY,
            "gcp/h100",
            "gcp/l4",
            "24 GB per GPU < 40 GB required by rule r",
        ),
        (
            "interconnects: [NVLink]\ntiers: [on_demand]",
            ANY,
            "aws/h100",
            "aws/a100",
            "interconnect none not allowed by rule r (allows NVLink)",
        ),
        (
            "pool_labels: {rack: b}",
            ANY,
            "aws/a100",
            "onprem/h100",
            "pool lacks label rack=b required by rule r",
        ),
        (
            "latency: {budget_ms: 80, default_origin: europe-west4}",
            H100,
            "gcp/h100",
            "onprem/h100",
            "RTT 84 ms > budget 80 ms (from europe-west4, rule r)",
        ),
        ("tiers: [on_demand]", ANY, "aws/a100", "onprem/h100", "reserved not allowed by rule r"),
        ("tiers: [on_demand]", ANY, "aws/a100", "gcp/l4", "spot not allowed by rule r"),
        (
            "max_price_per_gpu_hour: 2",
            H100,
            "onprem/h100",
            "gcp/h100",
            "$2.20/GPU-hour > cap $2.00 (rule r)",
        ),
        (
            "max_price_per_gpu_hour: 2\ntiers: [on_demand, spot]",
            H100,
            None,
            "aws/h100",
            "$6.90/GPU-hour > cap $2.00 (rule r)",
        ),
    ],
)
def test_each_hard_constraint_of_a_rule_excludes_with_its_reason(
    body: str, demand: JobDemand, chosen: str | None, excluded: str, reason: str
) -> None:
    decision = decide(demand, one_rule(body))
    assert where(decision) == chosen
    assert reason_for(decision, excluded) == reason
    assert decision.rule == "r"


def test_a_cpu_job_ignores_the_rules_gpu_constraints_but_not_residency() -> None:
    policy = one_rule("gpu_models: [H100]\nmin_gpu_memory_gb: 80\nregions: [us-east-1]")
    assert where(decide(JobDemand("j", 0), policy)) == "aws/cpu"


class TestTiers:
    def test_reserved_then_on_demand_then_spot_by_default(self) -> None:
        assert where(decide(H100)) == "onprem/h100"
        assert where(decide(H100, pools=standard_pools(onprem_h100=0))) == "aws/h100"
        assert where(decide(H100, pools=standard_pools(onprem_h100=0, aws_h100=0))) == "gcp/h100"

    def test_a_later_tier_says_it_waits_for_the_earlier_one(self) -> None:
        decision = decide(H100)
        assert reason_for(decision, "aws/h100") == (
            "fits, but the on_demand tier waits until reserved is full"
        )
        assert reason_for(decision, "gcp/h100") == (
            "fits, but the spot tier waits until reserved is full"
        )

    def test_the_rule_orders_the_tiers_even_against_price(self) -> None:
        policy = one_rule("tiers: [on_demand, reserved]")
        assert where(decide(H100, policy)) == "aws/h100"
        assert where(decide(H100, policy, standard_pools(aws_h100=0))) == "onprem/h100"

    def test_inside_a_tier_the_cheaper_pool_wins(self) -> None:
        policy = one_rule("tiers: [on_demand]")
        assert where(decide(ANY, policy)) == "aws/a100"  # $4.10 before $6.90

    def test_a_left_out_tier_is_never_used_even_when_the_rest_is_full(self) -> None:
        policy = one_rule("tiers: [reserved, on_demand]")
        decision = decide(H100, policy, standard_pools(onprem_h100=0, aws_h100=0))
        assert decision.placement is None
        assert reason_for(decision, "gcp/h100") == "spot not allowed by rule r"
        assert decision.summary == (
            "waiting: no capacity: 2 pools fit this job under rule r, none with 1 GPU free now"
        )

    @pytest.mark.parametrize(
        ("allow_spot", "tiers", "chosen"),
        [
            (None, "[spot]", "gcp/h100"),
            (True, "[spot]", "gcp/h100"),
            (False, "[spot]", None),
            (True, "[reserved]", "onprem/h100"),  # the hint asks for nothing the rule forbids
            (False, "[reserved, spot]", "onprem/h100"),
        ],
    )
    def test_the_spot_hint_can_only_forbid_spot(
        self, allow_spot: bool | None, tiers: str, chosen: str | None
    ) -> None:
        demand = JobDemand("j", 1, "H100", allow_spot=allow_spot)
        assert where(decide(demand, one_rule(f"tiers: {tiers}"))) == chosen

    def test_spot_refused_by_the_job_says_so(self) -> None:
        decision = decide(JobDemand("j", 1, "H100", allow_spot=False), one_rule("tiers: [spot]"))
        assert reason_for(decision, "gcp/h100") == "spot capacity refused by the job"


class TestLatency:
    BODY = "latency: {budget_ms: 20, default_origin: us-east-1}"

    def test_the_default_origin_keeps_work_near_it(self) -> None:
        decision = decide(H100, one_rule(self.BODY), standard_pools(onprem_h100=0))
        assert where(decision) == "aws/h100"
        assert reason_for(decision, "gcp/h100") == (
            "RTT 84 ms > budget 20 ms (from us-east-1, rule r)"
        )

    def test_the_jobs_own_origin_wins_over_the_default(self) -> None:
        demand = JobDemand("j", 1, "H100", origin_region="europe-west4")
        assert where(decide(demand, one_rule(self.BODY))) == "gcp/h100"

    def test_a_job_without_origin_under_a_budget_without_default_cannot_run(self) -> None:
        policy = one_rule("latency: {budget_ms: 20}")
        decision = decide(H100, policy)
        reason = (
            "the job names no origin region and rule r has a latency budget of 20 ms "
            "without a default origin"
        )
        assert decision.summary == f"waiting: {reason}"
        assert never_fits(H100, standard_pools(), policy) == (
            "rule r excludes every pool that could run this job (3 pools): "
            f"{reason} (onprem/h100, aws/h100, gcp/h100)"
        )

    def test_a_region_the_policy_does_not_know_is_out_of_any_budget(self) -> None:
        pools = [pool("lab", "gpu", "basement", "onprem", R, "H100", 80, 0.0)]
        decision = decide(H100, one_rule(self.BODY), pools)
        assert reason_for(decision, "lab/gpu") == (
            "RTT from us-east-1 to region basement unknown (rule r has a latency budget; "
            "declare the region in the policy)"
        )

    def test_measured_round_trips_override_the_estimate(self) -> None:
        body = "latency: {budget_ms: 20, default_origin: europe-west4}"
        measured = "{us-east-dc1: {europe-west4: 15}}"
        policy = one_rule(body, measured_rtt_ms=measured)
        assert where(decide(H100, policy)) == "onprem/h100"

    def test_the_estimate(self) -> None:
        policy = one_rule("tiers: [spot]", measured_rtt_ms="{us-east-dc1: {us-east-1: 1.5}}")
        assert estimated_rtt_ms(policy, "us-east-1", "us-east-1") == 2.0
        assert estimated_rtt_ms(policy, "us-east-dc1", "us-east-1") == 1.5
        assert estimated_rtt_ms(policy, "us-east-1", "us-east-dc1") == 1.5
        virginia_dublin = estimated_rtt_ms(policy, "us-east-1", "eu-west-1")
        assert virginia_dublin is not None and 65 < virginia_dublin < 80
        tokyo = estimated_rtt_ms(policy, "ap-northeast-1", "us-east-1")
        assert tokyo is not None and 130 < tokyo < 170
        assert estimated_rtt_ms(DEFAULT_POLICY, "us-east-dc1", "us-east-1") is None


class TestQuotas:
    POLICY = """\
quotas:
  nlp: {concurrent_gpus: 16, gpu_hours_per_day: 300}
rules: []
"""

    def test_a_job_over_the_concurrent_quota_waits_with_the_reason(self) -> None:
        policy = parse_policy(self.POLICY)
        usage = QuotaLedger({"nlp": ProjectUsage(gpus_in_use=14)})
        decision = decide(JobDemand("j", 4, project="nlp"), policy, usage=usage)
        reason = "project nlp uses 14 of 16 concurrent GPUs; this job needs 4"
        assert decision.placement is None
        assert decision.summary == f"waiting: {reason}"
        assert reason_for(decision, "onprem/h100") == reason
        assert reason_for(decision, "aws/cpu") == "pool has 0 GPUs in all < 4 asked"
        assert where(decide(JobDemand("j", 2, project="nlp"), policy, usage=usage)) == "onprem/h100"

    def test_placements_in_a_pass_count_against_the_quota(self) -> None:
        policy = parse_policy(self.POLICY)
        views = views_of(standard_pools())
        ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
        usage = QuotaLedger({"nlp": ProjectUsage(gpus_in_use=10)})
        placed = []
        for i in range(4):
            decision = place(JobDemand(f"j{i}", 4, project="nlp"), views, ledger, policy, usage)
            if decision.placement is not None:
                ledger.take(decision.placement, 4)
                usage.take("nlp", 4)
                placed.append(decision.placement)
        assert len(placed) == 1
        assert usage.gpus_in_use("nlp") == 14

    def test_the_daily_gpu_hours_hold_gpu_jobs_but_not_cpu_jobs(self) -> None:
        policy = parse_policy(self.POLICY)
        usage = QuotaLedger({"nlp": ProjectUsage(gpus_in_use=0, gpu_hours_today=300.0)})
        decision = decide(JobDemand("j", 1, project="nlp"), policy, usage=usage)
        assert decision.summary == "waiting: project nlp used 300.0 of 300 GPU-hours today"
        assert where(decide(JobDemand("j", 0, project="nlp"), policy, usage=usage)) == "aws/cpu"

    def test_other_projects_are_not_held(self) -> None:
        policy = parse_policy(self.POLICY)
        usage = QuotaLedger({"nlp": ProjectUsage(gpus_in_use=16)})
        assert where(decide(JobDemand("j", 4, project="vision"), policy, usage=usage)) is not None

    def test_a_job_bigger_than_the_quota_is_refused_at_submit(self) -> None:
        policy = parse_policy(self.POLICY)
        assert never_fits(JobDemand("j", 17, project="nlp"), standard_pools(), policy) == (
            "quota: project nlp may use at most 16 concurrent GPUs; this job asks for 17"
        )
        busy = QuotaLedger({"nlp": ProjectUsage(gpus_in_use=16, gpu_hours_today=900)})
        assert busy.blocked(policy, "nlp", 8) is not None
        assert never_fits(JobDemand("j", 8, project="nlp"), standard_pools(), policy) is None


class TestMatching:
    POLICY = parse_policy(
        """\
rules:
  - name: gdpr
    match: {projects: [gdpr-analytics]}
    priority: 5
  - name: prod-train
    match: {domains: [production], tasks: ["train-*", "*.finetune"]}
    priority: 100
  - name: team-nlp
    match: {labels: {team: nlp, tier: gold}}
    priority: 50
  - name: dev-nlp
    match: {projects: [nlp], domains: [development]}
default:
  priority: -1
"""
    )

    @pytest.mark.parametrize(
        ("demand", "rule"),
        [
            (
                JobDemand("j", 1, project="gdpr-analytics", domain="production", name="train-x"),
                "gdpr",
            ),
            (JobDemand("j", 1, project="nlp", domain="production", name="train-llm"), "prod-train"),
            (
                JobDemand("j", 1, project="nlp", domain="production", name="wf.finetune"),
                "prod-train",
            ),
            (JobDemand("j", 1, project="nlp", domain="staging", name="train-llm"), "default"),
            (JobDemand("j", 1, project="nlp", domain="production", name="Train-llm"), "default"),
            (JobDemand("j", 1, labels={"team": "nlp", "tier": "gold", "x": "y"}), "team-nlp"),
            (JobDemand("j", 1, labels={"team": "nlp"}), "default"),
            (JobDemand("j", 1, project="nlp", domain="development"), "dev-nlp"),
            (
                JobDemand(
                    "j",
                    1,
                    project="nlp",
                    domain="development",
                    labels={"team": "nlp", "tier": "gold"},
                ),
                "team-nlp",
            ),
            (JobDemand("j", 1, project="vision", domain="development"), "default"),
        ],
    )
    def test_the_first_matching_rule_decides_else_the_default(
        self, demand: JobDemand, rule: str
    ) -> None:
        assert rule_for(self.POLICY, demand).name == rule
        decision = decide(demand, self.POLICY)
        assert (decision.rule, decision.priority) == (rule, rule_for(self.POLICY, demand).priority)

    def test_higher_rule_priority_first_then_the_jobs_own_then_submit_order(self) -> None:
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        train_x = JobDemand("a", 1, domain="production", name="train-x")
        jobs = [
            ("late-train", train_x, 0, t0 + timedelta(2)),
            ("early-train", JobDemand("b", 1, domain="production", name="train-y"), 0, t0),
            ("urgent-other", JobDemand("c", 1, project="misc"), 1000, t0),
            ("gold", JobDemand("d", 1, labels={"team": "nlp", "tier": "gold"}), 0, t0),
            ("other", JobDemand("e", 1, project="misc"), 0, t0),
            ("urgent-other-later", JobDemand("f", 1, project="misc"), 1000, t0 + timedelta(1)),
        ]
        ordered = sorted(jobs, key=lambda j: queue_key(self.POLICY, j[1], j[2], j[3]))
        assert [name for name, *_ in ordered] == [
            "early-train",
            "late-train",
            "gold",
            "urgent-other",
            "urgent-other-later",
            "other",
        ]
        assert queue_priority(self.POLICY, jobs[0][1]) == 100
        assert queue_priority(DEFAULT_POLICY, jobs[0][1]) == 0


class TestExplanations:
    @pytest.mark.parametrize(
        ("health", "connected", "reason"),
        [
            (DataplaneHealth.STALE, True, "dataplane is stale"),
            (DataplaneHealth.LOST, True, "dataplane is lost"),
            (DataplaneHealth.HEALTHY, False, "dataplane is not connected"),
        ],
    )
    def test_a_dataplane_that_takes_no_work_says_why(
        self, health: DataplaneHealth, connected: bool, reason: str
    ) -> None:
        views = [
            DataplaneView(
                v.name,
                health if v.name == "onprem" else v.health,
                connected or v.name != "onprem",
                v.pools,
            )
            for v in views_of(standard_pools())
        ]
        ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
        decision = place(H100, views, ledger)
        assert reason_for(decision, "onprem/h100") == reason
        assert where(decision) == "aws/h100"

    def test_every_pool_is_listed_once_the_chosen_first(self) -> None:
        decision = decide(H100, one_rule("regions: [us-east-1, us-east-dc1]"))
        keys = [(c.dataplane, c.pool) for c in decision.candidates]
        assert sorted(keys) == sorted(p.key for p in standard_pools())
        assert decision.candidates[0] == Candidate(
            "onprem",
            "h100",
            True,
            "reserved tier, $1.10/GPU-hour, 8 of 8 GPUs free (rule r)",
            "us-east-dc1",
            R,
        )
        assert [c.chosen for c in decision.candidates].count(True) == 1

    def test_capacity_is_told_in_gpus(self) -> None:
        decision = decide(JobDemand("j", 4, "H100"), pools=standard_pools(onprem_h100=2))
        assert reason_for(decision, "onprem/h100") == "2 of 8 GPUs free < 4 asked"

    def test_a_job_no_pool_can_take_leads_with_the_closest_misses(self) -> None:
        policy = one_rule("regions: [europe-west4]\ntiers: [reserved]")
        decision = decide(JobDemand("j", 1, "L4"), policy)
        assert decision.summary == (
            "waiting: spot not allowed by rule r; GPU model H100 is not L4; "
            "region us-east-1 not allowed by rule r; region us-east-dc1 not allowed by rule r"
        )

    def test_without_explaining_only_the_chosen_pool_is_listed(self) -> None:
        views = views_of(standard_pools())
        ledger = ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})
        decision = place(H100, views, ledger, explain=False)
        assert [(c.dataplane, c.pool, c.chosen) for c in decision.candidates] == [
            ("onprem", "h100", True)
        ]
        assert not place(JobDemand("j", 9), views, ledger, explain=False).candidates


class TestNeverFits:
    def test_residency_that_excludes_every_fitting_pool_is_named(self) -> None:
        policy = one_rule("regions: [europe-west4]")
        message = never_fits(JobDemand("j", 1, "A100"), standard_pools(), policy)
        assert message == (
            "rule r excludes every pool that could run this job (1 pool): "
            "region us-east-1 not allowed by rule r (aws/a100)"
        )

    def test_busy_or_over_quota_now_is_not_never(self) -> None:
        policy = one_rule("regions: [europe-west4]")
        assert never_fits(JobDemand("j", 1, "H100"), standard_pools(gcp_h100=0), policy) is None

    def test_the_jobs_own_impossibility_comes_first(self) -> None:
        policy = one_rule("regions: [europe-west4]")
        assert never_fits(JobDemand("j", 1, "B200"), standard_pools(), policy) == (
            "resources.gpu_model: no dataplane has GPU model 'B200' "
            "(models in the fleet: A100, H100, L4)"
        )
