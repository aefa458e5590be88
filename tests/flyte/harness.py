"""A LocalFleet for the Flyte tests, and what the job processes need to find our code.

The agents run each Flyte task as ``pyflyte-execute`` in the attempt's folder; the process
inherits the agent's environment, so the agent must find ``pyflyte-execute`` on PATH and the
task's module (``tests.flyte.workflows``, ``fleet_workflow``) on PYTHONPATH. In production
the task's image has both.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient, FleetError
from tests.fleet_waits import fleet_logs, wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
HEARTBEAT_S = 0.5

T = TypeVar("T")


def pool_file(
    name: str,
    region: str,
    pools: list[dict[str, Any]],
    store_prefix: Path | None = None,
) -> dict[str, Any]:
    dataplane: dict[str, Any] = {"name": name, "region": region, "cloud": "test"}
    if store_prefix is not None:
        dataplane["store_prefix"] = str(store_prefix)
    return {"dataplane": dataplane, "pools": pools}


def gpu_pool(
    name: str, model: str, count: int = 4, purchase_type: str = "on_demand"
) -> dict[str, Any]:
    return {
        "name": name,
        "purchase_type": purchase_type,
        "gpu_model": model,
        "gpu_memory_gb": 80 if model in ("H100", "A100") else 24,
        "gpu_count": count,
    }


CPU_POOL: dict[str, Any] = {
    "name": "cpu",
    "purchase_type": "on_demand",
    "gpu_model": "",
    "gpu_memory_gb": 0,
    "gpu_count": 0,
}


@contextmanager
def job_environment(fleet: LocalFleet) -> Iterator[None]:
    """FLEET_ADDRESS (and plaintext) for the connector running in this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FLEET_TLS_CA", raising=False)
        for name, value in fleet.client_env().items():
            patch.setenv(name, value)
        patch.delenv("FLEET_PROJECT", raising=False)
        patch.delenv("FLEET_DOMAIN", raising=False)
        yield


@contextmanager
def running_fleet(
    root: Path,
    agents: dict[str, dict[str, Any]],
    database_url: str = "",
    stale_after_s: float = 5,
    lost_after_s: float = 30,
) -> Iterator[LocalFleet]:
    """A control plane and one agent per pool file, all connected, inside job_environment."""
    fleet = LocalFleet(
        root,
        database_url=database_url,
        heartbeat_interval_s=HEARTBEAT_S,
        stale_after_s=stale_after_s,
        lost_after_s=lost_after_s,
        python_path=(REPO, EXAMPLES),
    )
    with fleet, job_environment(fleet):
        fleet.start_control_plane()
        for name, pools in agents.items():
            fleet.add_agent(name, pools)
        with fleet.client(timeout_s=10) as client:
            wait_until(lambda: _all_connected(client, set(agents)), 60, "agents to connect", fleet)
        yield fleet


def _all_connected(client: FleetClient, names: set[str]) -> bool:
    try:
        ready = {d.name for d in client.list_dataplanes() if d.connected and d.pools}
    except FleetError:
        return False
    return names <= ready


__all__ = ["fleet_logs", "wait_until"]
