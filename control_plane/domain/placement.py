"""Where a job goes: the simple placement of the one-machine fleet.

A job fits a pool when the pool has the GPU model (if one is asked for), enough memory per
GPU, enough GPUs in all, is not spot when spot is refused, and belongs to the pinned
dataplane (if any). Among pools with free capacity now, cheaper tiers win: reserved, then
on-demand, then spot; then the lower price; then the pool left with the most free GPUs, so
a burst spreads. CPU-only jobs prefer CPU pools. The routing-policy engine replaces `place`.

Every decision lists every pool, chosen or excluded with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from control_plane.domain.phases import DataplaneHealth, PurchaseType
from control_plane.domain.records import PoolRecord

TIER_ORDER = {PurchaseType.RESERVED: 0, PurchaseType.ON_DEMAND: 1, PurchaseType.SPOT: 2}

PoolKey = tuple[str, str]  # (dataplane, pool)


@dataclass(frozen=True)
class JobDemand:
    job_id: str
    gpus: int
    gpu_model: str = ""  # empty: any model
    min_gpu_memory_gb: int = 0
    pin_dataplane: str = ""
    allow_spot: bool | None = None  # None: the (default) policy allows spot


@dataclass(frozen=True)
class DataplaneView:
    name: str
    health: DataplaneHealth
    connected: bool
    pools: tuple[PoolRecord, ...]


@dataclass(frozen=True)
class Candidate:
    dataplane: str
    pool: str
    chosen: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    placement: PoolKey | None
    candidates: tuple[Candidate, ...]

    @property
    def summary(self) -> str:
        """One line: where it goes, or why it waits."""
        if self.placement is not None:
            return f"placed on {self.placement[0]}/{self.placement[1]}"
        if not self.candidates:
            return "waiting: no dataplane is registered"
        reasons = sorted({c.reason for c in self.candidates})
        return "waiting: " + "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else "")


class CapacityLedger:
    """Free GPUs per pool during one scheduling pass; placing deducts at once (a hold)."""

    def __init__(self, free: dict[PoolKey, int]) -> None:
        self._free = dict(free)

    def free(self, key: PoolKey) -> int:
        return self._free.get(key, 0)

    def take(self, key: PoolKey, gpus: int) -> None:
        self._free[key] = self.free(key) - gpus


def ledger_for(free: Mapping[PoolKey, int], holds: Mapping[PoolKey, int]) -> CapacityLedger:
    """Reported free GPUs minus the holds: GPUs placed that no heartbeat has counted yet.

    Both must come from one snapshot of the registry, or a heartbeat landing between two
    reads would count the same GPUs as free twice.
    """
    return CapacityLedger({key: max(0, n - holds.get(key, 0)) for key, n in free.items()})


def static_mismatch(demand: JobDemand, pool: PoolRecord) -> str | None:
    """Why this pool can never run the job, whatever its load; None if it could."""
    if demand.pin_dataplane and pool.dataplane != demand.pin_dataplane:
        return f"job is pinned to dataplane {demand.pin_dataplane}"
    if demand.gpus > 0 and demand.gpu_model and pool.gpu_model.lower() != demand.gpu_model.lower():
        return f"GPU model {pool.gpu_model or 'none'} is not {demand.gpu_model}"
    if demand.gpus > 0 and pool.gpu_memory_gb < demand.min_gpu_memory_gb:
        return f"{pool.gpu_memory_gb} GB per GPU < {demand.min_gpu_memory_gb} GB asked"
    if demand.gpus > pool.gpu_total:
        return f"pool has {pool.gpu_total} GPUs in all < {demand.gpus} asked"
    if demand.allow_spot is False and pool.purchase_type is PurchaseType.SPOT:
        return "spot capacity refused by the job"
    return None


def place(
    demand: JobDemand, dataplanes: Sequence[DataplaneView], ledger: CapacityLedger
) -> Decision:
    """Choose a pool for the job; the caller deducts from the ledger when it applies the plan."""
    fits: list[PoolRecord] = []
    excluded: list[Candidate] = []
    for dp in dataplanes:
        for pool in dp.pools:
            reason = _exclusion(demand, dp, pool, ledger)
            if reason is None:
                fits.append(pool)
            else:
                excluded.append(Candidate(dp.name, pool.name, False, reason))
    if not fits:
        return Decision(None, tuple(excluded))
    fits.sort(key=lambda pool: _preference(demand, pool, ledger))
    best = fits[0]
    chosen = Candidate(best.dataplane, best.name, True, _why_chosen(best, ledger))
    others = [
        Candidate(
            p.dataplane, p.name, False, f"fits, but {best.dataplane}/{best.name} is preferred"
        )
        for p in fits[1:]
    ]
    return Decision(best.key, (chosen, *others, *excluded))


def never_fits(demand: JobDemand, pools: Sequence[PoolRecord]) -> str | None:
    """Why no registered pool could ever run the job (rejected at submit); None if one could."""
    if not pools:
        return "no dataplane has registered with the control plane yet"
    if any(static_mismatch(demand, pool) is None for pool in pools):
        return None
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
    largest = max(pools, key=lambda p: p.gpu_total)
    if demand.gpus > largest.gpu_total:
        model = f" of model {demand.gpu_model}" if demand.gpu_model else ""
        return (
            f"resources.gpus: no pool has {demand.gpus} GPUs{model} "
            f"(largest: {largest.gpu_total} in {largest.dataplane}/{largest.name})"
        )
    reasons = sorted({f"{p.dataplane}/{p.name}: {static_mismatch(demand, p)}" for p in pools})
    return "no pool can run this job: " + "; ".join(reasons)


def _exclusion(
    demand: JobDemand, dp: DataplaneView, pool: PoolRecord, ledger: CapacityLedger
) -> str | None:
    mismatch = static_mismatch(demand, pool)
    if mismatch is not None:
        return mismatch
    if not dp.connected:
        return "dataplane is not connected"
    if dp.health is not DataplaneHealth.HEALTHY:
        return f"dataplane is {dp.health.value}"
    free = ledger.free(pool.key)
    if demand.gpus > free:
        return f"{free} of {pool.gpu_total} GPUs free < {demand.gpus} asked"
    return None


def _preference(demand: JobDemand, pool: PoolRecord, ledger: CapacityLedger) -> tuple[object, ...]:
    wastes_gpus = demand.gpus == 0 and pool.gpu_total > 0
    free_after = ledger.free(pool.key) - demand.gpus
    return (
        wastes_gpus,
        TIER_ORDER[pool.purchase_type],
        pool.price_per_gpu_hour,
        -free_after,
        pool.dataplane,
        pool.name,
    )


def _why_chosen(pool: PoolRecord, ledger: CapacityLedger) -> str:
    return (
        f"{pool.purchase_type.value} tier, ${pool.price_per_gpu_hour:.2f}/GPU-hour, "
        f"{ledger.free(pool.key)} of {pool.gpu_total} GPUs free"
    )
