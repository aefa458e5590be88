"""Pool descriptions for launcher tests: reserved pools with only a name and a GPU count."""

from __future__ import annotations

from dataplane_agent.domain.capacity import PoolReport


def fixed_pools(gpus: dict[str, int]) -> list[PoolReport]:
    return [
        PoolReport(name, "reserved", "H100" if count else "", 80 if count else 0, count, count)
        for name, count in gpus.items()
    ]


CPU_ONLY = fixed_pools({"cpu": 0})
