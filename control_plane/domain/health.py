"""The two timers per dataplane.

`stale_after`: silent that long, the dataplane gets no new placements.
`lost_after`: silent that long, its attempts are declared lost and their jobs requeued.
If every dataplane is silent at once the fault is the control plane's own network, so
nothing expires. Silence is counted from the later of the last heartbeat and the control
plane's own start, so a restarted control plane gives agents time to reconnect.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from control_plane.domain.phases import DataplaneHealth


def last_heard(last_heartbeat_at: datetime | None, control_plane_started_at: datetime) -> datetime:
    if last_heartbeat_at is None:
        return control_plane_started_at
    return max(last_heartbeat_at, control_plane_started_at)


def health_of(
    heard_at: datetime, now: datetime, stale_after: timedelta, lost_after: timedelta
) -> DataplaneHealth:
    silence = now - heard_at
    if silence >= lost_after:
        return DataplaneHealth.LOST
    if silence >= stale_after:
        return DataplaneHealth.STALE
    return DataplaneHealth.HEALTHY


def expiry_suspended(heard: Iterable[datetime], now: datetime, stale_after: timedelta) -> bool:
    """True when no dataplane at all was heard within stale_after: expire nothing then."""
    heard = list(heard)
    return bool(heard) and all(now - at >= stale_after for at in heard)


class Timers:
    """The two timers of every dataplane, counted from this control plane's start."""

    def __init__(self, stale_after: timedelta, lost_after: timedelta, started_at: datetime) -> None:
        if lost_after <= stale_after:
            raise ValueError("lost_after must be longer than stale_after")
        self.stale_after = stale_after
        self.lost_after = lost_after
        self.started_at = started_at

    def heard_at(self, last_heartbeat_at: datetime | None) -> datetime:
        return last_heard(last_heartbeat_at, self.started_at)

    def health(self, last_heartbeat_at: datetime | None, now: datetime) -> DataplaneHealth:
        return health_of(self.heard_at(last_heartbeat_at), now, self.stale_after, self.lost_after)
