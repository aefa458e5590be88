"""Launchers run attempts on this dataplane: local processes now, Kubernetes pods later.

The launchers resolve lazily: the runner process (which imports this package) must not load
fsspec and flyteidl, which the launchers' staging of Flyte tasks needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataplane_agent.launcher.base import (
    InvalidAttemptId,
    Launcher,
    LaunchRequest,
    UnknownAttempt,
    check_attempt_id,
)
from dataplane_agent.launcher.cleanup import stop_all_attempts

if TYPE_CHECKING:
    from dataplane_agent.launcher.process import ProcessLauncher, WorkdirBusy

__all__ = [
    "InvalidAttemptId",
    "LaunchRequest",
    "Launcher",
    "ProcessLauncher",
    "UnknownAttempt",
    "WorkdirBusy",
    "check_attempt_id",
    "stop_all_attempts",
]

_LAZY = {
    "ProcessLauncher": "dataplane_agent.launcher.process",
    "WorkdirBusy": "dataplane_agent.launcher.process",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dataplane_agent.launcher' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
