"""A LocalFleet for the Flyte tests, and what the job processes need to find our code.

The agents run each Flyte task as ``pyflyte-execute`` in the attempt's folder; the process
inherits the agent's environment, so the agent must find ``pyflyte-execute`` on PATH and the
task's module (``tests.flyte.workflows``, ``fleet_workflow``) on PYTHONPATH. In production
the task's image has both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient, FleetError

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
def job_environment(address: str) -> Iterator[None]:
    """FLEET_ADDRESS for the connector running in this process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_ADDRESS", address)
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
    with fleet, job_environment(fleet.address):
        fleet.start_control_plane()
        for name, pools in agents.items():
            fleet.add_agent(name, pools)
        with FleetClient(fleet.address, timeout_s=10) as client:
            wait_until(lambda: _all_connected(client, set(agents)), 60, "agents to connect", fleet)
        yield fleet


def _all_connected(client: FleetClient, names: set[str]) -> bool:
    try:
        ready = {d.name for d in client.list_dataplanes() if d.connected and d.pools}
    except FleetError:
        return False
    return names <= ready


def wait_until(
    check: Callable[[], T],
    timeout_s: float,
    what: str,
    fleet: LocalFleet,
    *,
    all_alive: bool = True,
) -> T:
    """Poll check until it returns something truthy; fail with the fleet's logs if never.

    all_alive: also fail at once when a process of the fleet died (unless a test killed it).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all_alive:
            fleet.check_alive()
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{fleet_logs(fleet)}")


def fleet_logs(fleet: LocalFleet, tail: int = 3000) -> str:
    """The tails of every log of the fleet (control plane, agents, attempts), for failures."""
    parts = []
    logs = [*fleet.root.rglob("*.log"), *fleet.root.rglob("attempts/*/log")]
    for log in sorted(logs):
        text = log.read_text(errors="replace")[-tail:]
        parts.append(f"--- {log.relative_to(fleet.root)}\n{text}")
    return "\n".join(parts)
