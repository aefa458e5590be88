"""Waiting on a LocalFleet (subprocesses) in tests: poll, and fail with every log's tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from fleet_cli.local_fleet import LocalFleet

T = TypeVar("T")


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
