"""Launchers run attempts on this dataplane: local processes now, Kubernetes pods later."""

from dataplane_agent.launcher.base import (
    InvalidAttemptId,
    Launcher,
    LaunchRequest,
    UnknownAttempt,
    check_attempt_id,
)
from dataplane_agent.launcher.cleanup import stop_all_attempts
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
