"""Placement is pure: each rule is checked on small fleets built in the test."""

from __future__ import annotations

from typing import ClassVar

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
from control_plane.domain.records import PoolRecord


def pool(
    dp: str,
    name: str,
    *,
    model: str = "H100",
    mem: int = 80,
    total: int = 8,
    free: int | None = None,
    tier: PurchaseType = PurchaseType.RESERVED,
    price: float = 1.0,
) -> PoolRecord:
    return PoolRecord(
        dp,
        name,
        "us-east-1",
        "aws",
        tier,
        model,
        mem,
        total,
        total if free is None else free,
        price_per_gpu_hour=price,
    )


def fleet(
    *pools: PoolRecord, health: DataplaneHealth = DataplaneHealth.HEALTHY, connected: bool = True
) -> list[DataplaneView]:
    names = sorted({p.dataplane for p in pools})
    return [
        DataplaneView(n, health, connected, tuple(p for p in pools if p.dataplane == n))
        for n in names
    ]


def free_of(views: list[DataplaneView]) -> dict[tuple[str, str], int]:
    return {p.key: p.gpu_free for dp in views for p in dp.pools}


def decide(demand: JobDemand, views: list[DataplaneView]) -> tuple[str, str] | None:
    return place(demand, views, ledger_for(free_of(views), {})).placement


def test_prefers_reserved_then_on_demand_then_spot() -> None:
    views = fleet(
        pool("spot", "p", tier=PurchaseType.SPOT, price=0.5),
        pool("cloud", "p", tier=PurchaseType.ON_DEMAND, price=3.0),
        pool("onprem", "p", tier=PurchaseType.RESERVED, price=2.0),
    )
    assert decide(JobDemand("j", 1), views) == ("onprem", "p")


def test_bursts_to_the_next_tier_when_reserved_is_full() -> None:
    views = fleet(
        pool("onprem", "p", free=1),
        pool("cloud", "p", tier=PurchaseType.ON_DEMAND),
        pool("spot", "p", tier=PurchaseType.SPOT),
    )
    assert decide(JobDemand("j", 2), views) == ("cloud", "p")


def test_spot_refused_by_the_job_is_never_chosen() -> None:
    views = fleet(pool("spot", "p", tier=PurchaseType.SPOT))
    decision = place(JobDemand("j", 1, allow_spot=False), views, ledger_for(free_of(views), {}))
    assert decision.placement is None
    assert decision.candidates[0].reason == "spot capacity refused by the job"


@pytest.mark.parametrize(
    ("demand", "reason"),
    [
        (JobDemand("j", 1, gpu_model="A100"), "GPU model H100 is not A100"),
        (JobDemand("j", 1, min_gpu_memory_gb=141), "80 GB per GPU < 141 GB asked"),
        (JobDemand("j", 9), "pool has 8 GPUs in all < 9 asked"),
        (JobDemand("j", 1, pin_dataplane="other"), "job is pinned to dataplane other"),
    ],
)
def test_each_hard_constraint_excludes_with_its_reason(demand: JobDemand, reason: str) -> None:
    decision = place(
        demand, fleet(pool("onprem", "p")), ledger_for(free_of(fleet(pool("onprem", "p"))), {})
    )
    assert decision.placement is None
    assert [c.reason for c in decision.candidates] == [reason]
    assert reason in decision.summary


def test_gpu_model_matches_case_insensitively() -> None:
    assert decide(JobDemand("j", 1, gpu_model="h100"), fleet(pool("a", "p"))) == ("a", "p")


@pytest.mark.parametrize(
    ("health", "connected", "reason"),
    [
        (DataplaneHealth.STALE, True, "dataplane is stale"),
        (DataplaneHealth.LOST, True, "dataplane is lost"),
        (DataplaneHealth.HEALTHY, False, "dataplane is not connected"),
    ],
)
def test_unhealthy_dataplanes_get_no_work(
    health: DataplaneHealth, connected: bool, reason: str
) -> None:
    views = fleet(pool("a", "p"), health=health, connected=connected)
    decision = place(JobDemand("j", 1), views, ledger_for(free_of(views), {}))
    assert decision.placement is None
    assert decision.candidates[0].reason == reason


def test_holds_deduct_capacity_not_yet_reported() -> None:
    views = fleet(pool("a", "p", total=8, free=8), pool("b", "p", total=8, free=8, price=2.0))
    ledger = ledger_for(free_of(views), {("a", "p"): 7})
    assert place(JobDemand("j", 2), views, ledger).placement == ("b", "p")


def test_a_burst_spreads_over_pools_of_the_same_tier_and_price() -> None:
    views = fleet(pool("a", "p", total=4), pool("b", "p", total=4))
    ledger = ledger_for(free_of(views), {})
    chosen = []
    for i in range(4):
        decision = place(JobDemand(f"j{i}", 2), views, ledger)
        assert decision.placement is not None
        ledger.take(decision.placement, 2)
        chosen.append(decision.placement[0])
    assert sorted(chosen) == ["a", "a", "b", "b"]
    assert place(JobDemand("j5", 1), views, ledger).placement is None


def test_cpu_jobs_prefer_cpu_pools() -> None:
    views = fleet(pool("gpu", "p"), pool("cpu", "p", model="", mem=0, total=0))
    assert decide(JobDemand("j", 0), views) == ("cpu", "p")


def test_every_pool_is_listed_with_a_reason() -> None:
    views = fleet(pool("a", "p"), pool("b", "p", model="A100"), pool("c", "p", price=9.0))
    decision = place(JobDemand("j", 1, gpu_model="H100"), views, ledger_for(free_of(views), {}))
    by_dp = {c.dataplane: c for c in decision.candidates}
    assert by_dp["a"].chosen
    assert "reserved tier" in by_dp["a"].reason
    assert not by_dp["b"].chosen and "A100 is not H100" in by_dp["b"].reason
    assert not by_dp["c"].chosen and "a/p is preferred" in by_dp["c"].reason


def test_ledger_take_deducts() -> None:
    ledger = CapacityLedger({("a", "p"): 3})
    ledger.take(("a", "p"), 2)
    assert ledger.free(("a", "p")) == 1
    assert ledger.free(("x", "y")) == 0


class TestNeverFits:
    pools: ClassVar[list[PoolRecord]] = [
        pool("onprem", "h100"),
        pool("cloud", "a100", model="A100", mem=40, total=4),
    ]

    def test_unknown_model_names_the_models_there_are(self) -> None:
        message = never_fits(JobDemand("j", 1, gpu_model="B200"), self.pools)
        assert message == (
            "resources.gpu_model: no dataplane has GPU model 'B200' "
            "(models in the fleet: A100, H100)"
        )

    def test_too_many_gpus_names_the_largest_pool(self) -> None:
        message = never_fits(JobDemand("j", 6, gpu_model="A100"), self.pools)
        assert message == (
            "resources.gpus: no pool has 6 GPUs of model A100 (largest: 4 in cloud/a100)"
        )

    def test_unknown_pin(self) -> None:
        message = never_fits(JobDemand("j", 1, pin_dataplane="nowhere"), self.pools)
        assert message is not None and "no dataplane named 'nowhere'" in message

    def test_empty_fleet(self) -> None:
        assert never_fits(JobDemand("j", 0), []) == (
            "no dataplane has registered with the control plane yet"
        )

    def test_busy_but_possible_is_not_rejected(self) -> None:
        busy = [pool("onprem", "h100", free=0)]
        assert never_fits(JobDemand("j", 8, gpu_model="H100"), busy) is None
