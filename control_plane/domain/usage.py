"""What a project has used, for quotas: GPUs held now and GPU-hours since midnight UTC."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AttemptSpan:
    project: str
    gpus: int
    live: bool  # holds its GPUs now (pending, starting, running)
    started_at: datetime | None
    finished_at: datetime | None


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def usage_by_project(spans: Iterable[AttemptSpan], now: datetime) -> dict[str, tuple[int, float]]:
    """project -> (GPUs held now, GPU-hours run since midnight UTC of `now`'s day).

    An attempt holds its GPUs from placement (so a burst cannot overrun a quota before the
    agents report); it counts GPU-hours only while it ran, clipped to today.
    """
    since = day_start(now)
    usage: dict[str, tuple[int, float]] = {}
    for span in spans:
        held, hours = usage.get(span.project, (0, 0.0))
        if span.live:
            held += span.gpus
        if span.started_at is not None:
            start = max(span.started_at, since)
            end = min(span.finished_at or now, now)
            if end > start:
                hours += span.gpus * (end - start).total_seconds() / 3600
        usage[span.project] = (held, hours)
    return usage
