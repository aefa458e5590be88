"""examples/policy.yaml parses and routes the demo fleet's jobs as its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.domain.phases import DataplaneHealth, PurchaseType
from control_plane.domain.placement import (
    CapacityLedger,
    DataplaneView,
    JobDemand,
    ledger_for,
    never_fits,
    place,
)
from control_plane.domain.policy import Policy, ProjectUsage, QuotaLedger, parse_policy
from control_plane.domain.records import PoolRecord
from fleet_cli.demo import DATAPLANES

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(EXAMPLE.read_text(encoding="utf-8"), source="examples/policy.yaml")


def demo_fleet() -> list[DataplaneView]:
    views = []
    for name, pool_file in DATAPLANES.items():
        dataplane = pool_file["dataplane"]
        pools = tuple(
            PoolRecord(
                name,
                p["name"],
                dataplane["region"],
                dataplane["cloud"],
                PurchaseType(p["purchase_type"]),
                p["gpu_model"],
                p["gpu_memory_gb"],
                p["gpu_count"],
                p["gpu_count"],
                p.get("interconnect", ""),
                p.get("price_per_gpu_hour", 0.0),
            )
            for p in pool_file["pools"]
        )
        views.append(DataplaneView(name, DataplaneHealth.HEALTHY, True, pools))
    return views


def idle_ledger(views: list[DataplaneView]) -> CapacityLedger:
    return ledger_for({p.key: p.gpu_free for v in views for p in v.pools}, {})


def route(policy: Policy, demand: JobDemand, ledger: CapacityLedger | None = None) -> str:
    views = demo_fleet()
    decision = place(demand, views, ledger or idle_ledger(views), policy)
    if decision.placement is None:
        return decision.summary
    return "/".join(decision.placement)


def test_eu_personal_data_stays_in_europe_west4_even_with_on_prem_idle(policy: Policy) -> None:
    demand = JobDemand("j", 2, "H100", project="gdpr-analytics", domain="production")
    assert route(policy, demand) == "gcp-europe-west4-spot/h100"


def test_production_training_uses_on_prem_then_waits_under_the_price_cap(policy: Policy) -> None:
    views = demo_fleet()
    ledger = idle_ledger(views)
    train = JobDemand("j", 8, "H100", project="research", domain="production", name="train-llm")
    assert route(policy, train, ledger) == "onprem-dc1/h100"
    ledger.take(("onprem-dc1", "h100"), 8)
    decision = place(train, views, ledger, policy)
    assert decision.placement is None
    reasons = {f"{c.dataplane}/{c.pool}": c.reason for c in decision.candidates}
    assert reasons["aws-us-east-1/h100"] == "$6.90/GPU-hour > cap $5.00 (rule prod-training)"
    assert reasons["gcp-europe-west4-spot/h100"] == "spot not allowed by rule prod-training"
    any_model = JobDemand("k", 4, project="research", domain="production", name="finetune-chat")
    assert route(policy, any_model, ledger) == "aws-us-east-1/a100"
    assert decision.priority == 100


def test_interactive_work_stays_near_us_east_1(policy: Policy) -> None:
    views = demo_fleet()
    ledger = idle_ledger(views)
    ledger.take(("onprem-dc1", "h100"), 8)
    notebook = JobDemand("j", 1, "H100", labels={"interactive": "true"})
    assert route(policy, notebook, ledger) == "aws-us-east-1/h100"
    ledger.take(("aws-us-east-1", "h100"), 8)
    assert route(policy, notebook, ledger).startswith("waiting: no capacity")


def test_batch_inference_goes_to_spot_first(policy: Policy) -> None:
    assert route(policy, JobDemand("j", 4, "L4", name="batch-infer")) == "gcp-europe-west4-spot/l4"
    assert route(policy, JobDemand("j", 1, "L4", name="embed-docs")) == "gcp-europe-west4-spot/l4"


def test_everything_else_prefers_reserved_and_respects_the_spot_hint(policy: Policy) -> None:
    assert route(policy, JobDemand("j", 2, "H100", name="rlhf-reward")) == "onprem-dc1/h100"
    assert route(policy, JobDemand("j", 1, "A100", name="eval-gsm8k")) == "aws-us-east-1/a100"
    assert route(policy, JobDemand("j", 0, name="tokenize-corpus")) == "aws-us-east-1/cpu"
    pools = [p for v in demo_fleet() for p in v.pools]
    refused = never_fits(JobDemand("j", 1, "L4", allow_spot=False), pools, policy)
    assert refused == (
        "no pool can run this job: gcp-europe-west4-spot/l4: spot capacity refused by the job"
    )


def test_quotas_hold_research_and_interns(policy: Policy) -> None:
    views = demo_fleet()
    usage = QuotaLedger({"research": ProjectUsage(gpus_in_use=10)})
    job = JobDemand("j", 4, project="research")
    decision = place(job, views, idle_ledger(views), policy, usage)
    assert decision.summary == (
        "waiting: project research uses 10 of 12 concurrent GPUs; this job needs 4"
    )
    pools = [p for v in views for p in v.pools]
    assert never_fits(JobDemand("j", 4, project="interns"), pools, policy) == (
        "quota: project interns may use at most 2 concurrent GPUs; this job asks for 4"
    )
