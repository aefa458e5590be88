"""Per-project quotas: concurrent GPUs and GPU-hours per day.

The caller reads each project's usage at the start of a pass (GPUs held by live attempts,
GPU-hours used today, by the caller's clock) and deducts every placement it makes during the pass
with `take`, so one burst cannot overrun a quota before the next read. Jobs without GPUs
are never held by quotas. A job that would go over waits with the reason; smaller jobs of
the same project may still start meanwhile (quotas do not block the queue behind them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from control_plane.domain.policy.model import Policy, Quota


@dataclass(frozen=True)
class ProjectUsage:
    gpus_in_use: int = 0
    gpu_hours_today: float = 0.0


class QuotaLedger:
    """Per-project usage during one scheduling pass; placement checks it, the caller takes."""

    def __init__(self, usage: Mapping[str, ProjectUsage] | None = None) -> None:
        self._gpus = {project: u.gpus_in_use for project, u in (usage or {}).items()}
        self._hours = {project: u.gpu_hours_today for project, u in (usage or {}).items()}

    def gpus_in_use(self, project: str) -> int:
        return self._gpus.get(project, 0)

    def gpu_hours_today(self, project: str) -> float:
        return self._hours.get(project, 0.0)

    def take(self, project: str, gpus: int) -> None:
        self._gpus[project] = self.gpus_in_use(project) + gpus

    def blocked(self, policy: Policy, project: str, gpus: int) -> str | None:
        """Why the project's quota holds a job of this many GPUs now; None if it does not."""
        quota = policy.quotas.get(project)
        if quota is None or gpus == 0:
            return None
        in_use = self.gpus_in_use(project)
        if quota.concurrent_gpus is not None and in_use + gpus > quota.concurrent_gpus:
            return (
                f"project {project} uses {in_use} of {quota.concurrent_gpus} concurrent GPUs; "
                f"this job needs {gpus}"
            )
        hours = self.gpu_hours_today(project)
        if quota.gpu_hours_per_day is not None and hours >= quota.gpu_hours_per_day:
            return (
                f"project {project} used {hours:.1f} of {quota.gpu_hours_per_day:g} GPU-hours today"
            )
        return None


def quota_never_allows(quota: Quota | None, project: str, gpus: int) -> str | None:
    """Why the quota itself (not its current use) can never let this job start."""
    if quota is None or gpus == 0:
        return None
    if quota.concurrent_gpus is not None and gpus > quota.concurrent_gpus:
        return (
            f"project {project} may use at most {quota.concurrent_gpus} concurrent GPUs; "
            f"this job asks for {gpus}"
        )
    if quota.gpu_hours_per_day == 0:
        return f"project {project} has a quota of 0 GPU-hours per day"
    return None
