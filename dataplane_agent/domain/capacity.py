"""GPU capacity per pool: which waiting attempts may start, and on which device indices.

A pool of N GPUs has device indices 0..N-1. An attempt holds its indices from the moment
its runner is spawned until it reaches a final phase; free = total - held. Waiting attempts
start in strict FIFO order per pool: when the oldest waiting attempt of a pool does not fit,
younger ones of that pool wait too, so a big attempt is never starved by small ones.
An attempt that wants no GPUs starts at once: it cannot delay anyone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Holding:
    """An attempt that holds GPUs (spawned, not ended)."""

    attempt_id: str
    pool: str
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Waiting:
    """An attempt waiting for GPUs, oldest first in the sequence given to :func:`admit`."""

    attempt_id: str
    pool: str
    gpus: int


@dataclass(frozen=True)
class Admission:
    attempt_id: str
    pool: str
    devices: tuple[int, ...]


@dataclass(frozen=True)
class PoolUsage:
    name: str
    total: int
    free: int


@dataclass(frozen=True)
class PoolReport:
    """A GPU pool as a heartbeat describes it: what it is, and how many GPUs are free.

    The process launcher's pools come from the pool file; the Kubernetes launcher derives
    them from the cluster's nodes, so they come and go with the nodes.
    """

    name: str
    purchase_type: str          # reserved | on_demand | spot
    gpu_model: str
    gpu_memory_gb: int
    gpu_total: int
    gpu_free: int
    price_per_gpu_hour: float = 0.0
    interconnect: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    region: str = ""            # empty: the dataplane's region
    # A pool of several nodes (one job runs on one node); None: the pool is one machine.
    gpu_node_size: int | None = None    # GPUs of its largest node
    gpu_node_free: int | None = None    # the most free GPUs on any one node


def free_devices(total: int, holdings: Iterable[Holding], pool: str) -> list[int]:
    held = {device for h in holdings if h.pool == pool for device in h.devices}
    return [device for device in range(total) if device not in held]


def pool_usage(
    pools: Mapping[str, int], holdings: Sequence[Holding], waiting: Sequence[Waiting] = ()
) -> list[PoolUsage]:
    """Total and free GPUs of every pool, in the order the pools were declared.

    Free is what the control plane may still place here: GPUs promised to attempts that
    wait in this agent's queue count as taken, or the control plane would pile more work
    onto a pool that is already full.
    """
    queued: dict[str, int] = {}
    for attempt in waiting:
        queued[attempt.pool] = queued.get(attempt.pool, 0) + attempt.gpus
    return [
        PoolUsage(
            name, total, max(0, len(free_devices(total, holdings, name)) - queued.get(name, 0))
        )
        for name, total in pools.items()
    ]


def pool_problem(pools: Mapping[str, int], pool: str, gpus: int) -> str | None:
    """Why a launch can never run here (unknown pool, too many GPUs), or None."""
    if pool not in pools:
        known = ", ".join(sorted(pools)) or "none"
        return f"unknown pool {pool!r} (this dataplane has: {known})"
    if gpus > pools[pool]:
        return f"wants {gpus} GPUs but pool {pool!r} has only {pools[pool]}"
    return None


def admit(
    pools: Mapping[str, int], holdings: Sequence[Holding], waiting: Sequence[Waiting]
) -> list[Admission]:
    """The waiting attempts that may start now, with the device indices each gets."""
    free = {name: free_devices(total, holdings, name) for name, total in pools.items()}
    blocked: set[str] = set()
    admitted: list[Admission] = []
    for attempt in waiting:
        if attempt.pool not in free or (attempt.pool in blocked and attempt.gpus > 0):
            continue
        available = free[attempt.pool]
        if attempt.gpus > len(available):
            blocked.add(attempt.pool)
            continue
        devices = tuple(available[: attempt.gpus])
        free[attempt.pool] = available[attempt.gpus :]
        admitted.append(Admission(attempt.attempt_id, attempt.pool, devices))
    return admitted
