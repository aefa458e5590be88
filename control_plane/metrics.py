"""Prometheus metrics of the control plane (issue 9).

Interface the rest of the control plane relies on:

    metrics = ControlPlaneMetrics(FleetStats(database), timers, clock)
    metrics.placed(latencies_s)                 # scheduler: submit -> placement, per job
    metrics.attempts_ended(phase, reason, n)    # an attempt reached a final phase
    metrics.heartbeat_handled(seconds)          # one agent report applied
    metrics.submitted(n)                        # jobs newly accepted by Submit
    body, content_type = await metrics.render() # the /metrics page, gauges refreshed

`stats` is the registry's read of live rows (`registry.FleetStats`), `timers` the same
`domain.health.Timers` the scheduler uses (so a replica that just became the leader counts
silence as the scheduler does), `clock` the control plane's clock. Each instance has its
own `CollectorRegistry` (`metrics.registry`), so tests and several in-process control
planes never share counters.

The hooks are cheap and synchronous (a lock and an add inside prometheus_client): call them
from the hot paths. The gauges are not kept up to date by anyone: `render` reads one fresh
snapshot from the registry and builds them from it, so a dataplane or project that went
away leaves no stale series behind. When the database cannot be reached, the page still
answers with the counters and `fleet_registry_up 0`, and without the registry's gauges
(stale numbers would look like a healthy fleet).

Metrics (label values are lower case, as the domain's enums spell them):

| name | type | labels |
|---|---|---|
| fleet_jobs_submitted_total | counter | |
| fleet_placement_latency_seconds | histogram | |
| fleet_attempts_ended_total | counter | phase, reason |
| fleet_heartbeat_handling_seconds | histogram | |
| fleet_jobs | gauge | phase (queued, scheduled, running) |
| fleet_queue_depth | gauge | project (projects with queued jobs) |
| fleet_dataplanes | gauge | health (healthy, stale, lost) |
| fleet_dataplanes_by_state | gauge | state (active, cordoned, draining, drained) |
| fleet_gpus_total, fleet_gpus_free | gauge | dataplane, pool, tier (reserved, on_demand, spot) |
| fleet_heartbeat_age_seconds | gauge | dataplane (those heard at least once) |
| fleet_expiry_suspended | gauge | 1: every dataplane silent for stale_after, nothing expires |
| fleet_registry_up | gauge | 0: the last render could not read the registry |
| fleet_registry_read_seconds | gauge | how long the last render's read took |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.clock import Clock
from control_plane.domain.cordon import DataplaneState, dataplane_state
from control_plane.domain.health import Timers, expiry_suspended
from control_plane.domain.phases import DataplaneHealth
from control_plane.registry.database import DatabaseUnavailable
from control_plane.registry.fleet_stats import FleetSnapshot, FleetStats

log = logging.getLogger(__name__)

# Fine from 1 ms to 100 ms, where a heartbeat's p99 lives (a benchmark interpolates the
# p99 within one bucket: no step is more than 25% wider), coarse beyond.
HEARTBEAT_BUCKETS_S = (
    0.0005, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.005,
    0.006, 0.007, 0.008, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05,
    0.06, 0.07, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
)
# A job placed by the pass its submit wakes takes milliseconds; one waiting for capacity
# or quota can wait for hours.
PLACEMENT_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 12 * 3600.0,
)
# Agents choose an attempt's end reason: past this many (phase, reason) series, new reasons
# are counted as "other", so that a misbehaving agent cannot grow the page without bound.
MAX_ENDED_SERIES = 200
OTHER_REASON = "other"


class ControlPlaneMetrics:
    def __init__(self, stats: FleetStats, timers: Timers, clock: Clock) -> None:
        self._stats = stats
        self._timers = timers
        self._clock = clock
        self.registry = CollectorRegistry()
        self._submitted = Counter(
            "fleet_jobs_submitted", "Jobs accepted by Submit (a repeated client key is not "
            "counted again).", registry=self.registry,
        )
        self._placement = Histogram(
            "fleet_placement_latency_seconds", "From a job's submit to its placement.",
            buckets=PLACEMENT_BUCKETS_S, registry=self.registry,
        )
        self._ended = Counter(
            "fleet_attempts_ended", "Attempts that reached a final phase, by phase and reason "
            "(lost and preempted are the ones to alert on).",
            ["phase", "reason"], registry=self.registry,
        )
        self._ended_series: set[tuple[str, str]] = set()
        self._heartbeat = Histogram(
            "fleet_heartbeat_handling_seconds", "Time to apply one agent report (heartbeat "
            "or attempt update) to the registry.",
            buckets=HEARTBEAT_BUCKETS_S, registry=self.registry,
        )
        self._gauges = _Snapshot()
        self.registry.register(self._gauges)
        self._registry_down = False

    # -- hooks for the hot paths ------------------------------------------------------------

    def submitted(self, count: int = 1) -> None:
        if count > 0:
            self._submitted.inc(count)

    def placed(self, latencies_s: Iterable[float]) -> None:
        for latency in latencies_s:
            # Clocks of two replicas may disagree a little: never a negative latency.
            self._placement.observe(max(0.0, latency))

    def attempts_ended(self, phase: str, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        key = (str(phase).lower(), reason or "none")
        if key not in self._ended_series:
            if len(self._ended_series) >= MAX_ENDED_SERIES:
                key = (key[0], OTHER_REASON)
            self._ended_series.add(key)
        self._ended.labels(*key).inc(count)

    def heartbeat_handled(self, seconds: float) -> None:
        self._heartbeat.observe(max(0.0, seconds))

    # -- the page ---------------------------------------------------------------------------

    async def render(self) -> tuple[bytes, str]:
        """The exposition page, with the gauges read fresh from the registry."""
        started = time.perf_counter()
        try:
            snapshot = await self._stats.snapshot()
        except DatabaseUnavailable as error:
            if not self._registry_down:
                log.warning("metrics: the registry's gauges are left out: %s", error)
            self._registry_down = True
            self._gauges.families = [_gauge("fleet_registry_up", _UP_HELP, 0)]
        else:
            self._registry_down = False
            read_s = time.perf_counter() - started
            self._gauges.families = [
                _gauge("fleet_registry_up", _UP_HELP, 1),
                _gauge("fleet_registry_read_seconds", "How long the last render's registry "
                       "read took.", read_s),
                *gauges(snapshot, self._timers, self._clock.now()),
            ]
        # No await between setting the families and reading them: two scrapes at once
        # each get a consistent page.
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_UP_HELP = "1 when the last render read the registry; 0: its gauges are left out."


class _Snapshot(Collector):
    """The gauges built by the last render (replaced whole each time)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def gauges(snapshot: FleetSnapshot, timers: Timers, now: datetime) -> list[Metric]:
    """The registry's gauges for one snapshot taken at `now`."""
    jobs = GaugeMetricFamily("fleet_jobs", "Jobs in each live phase.", labels=["phase"])
    for phase, count in snapshot.jobs_by_phase.items():
        jobs.add_metric([phase], count)

    queue = GaugeMetricFamily(
        "fleet_queue_depth", "Queued jobs per project (projects with none are left out).",
        labels=["project"],
    )
    for project, count in snapshot.queued_by_project.items():
        queue.add_metric([project], count)

    by_health = dict.fromkeys(DataplaneHealth, 0)
    by_state = dict.fromkeys(DataplaneState, 0)
    age = GaugeMetricFamily(
        "fleet_heartbeat_age_seconds", "Seconds since each dataplane's last heartbeat.",
        labels=["dataplane"],
    )
    for dataplane in snapshot.dataplanes:
        by_health[timers.health(dataplane.last_heartbeat_at, now)] += 1
        state = dataplane_state(
            dataplane.cordoned_at, dataplane.drain_deadline, dataplane.live_attempts
        )
        by_state[state] += 1
        if dataplane.last_heartbeat_at is not None:
            seconds = (now - dataplane.last_heartbeat_at).total_seconds()
            age.add_metric([dataplane.name], max(0.0, seconds))
    health = GaugeMetricFamily(
        "fleet_dataplanes", "Dataplanes by health (the stale and lost timers).",
        labels=["health"],
    )
    for value, count in by_health.items():
        health.add_metric([value.value], count)
    states = GaugeMetricFamily(
        "fleet_dataplanes_by_state", "Dataplanes by operator state (cordon and drain).",
        labels=["state"],
    )
    for state_value, count in by_state.items():
        states.add_metric([state_value.value], count)

    suspended = expiry_suspended(
        (timers.heard_at(d.last_heartbeat_at) for d in snapshot.dataplanes),
        now,
        timers.stale_after,
    )
    expiry = _gauge(
        "fleet_expiry_suspended", "1 when no dataplane was heard for the stale period: the "
        "control plane suspects its own network and declares nothing lost.", int(suspended),
    )

    labels = ["dataplane", "pool", "tier"]
    total = GaugeMetricFamily("fleet_gpus_total", "GPUs of each pool.", labels=labels)
    free = GaugeMetricFamily(
        "fleet_gpus_free", "Free GPUs of each pool, as its agent last reported them.",
        labels=labels,
    )
    for pool in snapshot.pools:
        key = [pool.dataplane, pool.pool, pool.purchase_type]
        total.add_metric(key, pool.gpu_total)
        free.add_metric(key, pool.gpu_free)
    return [jobs, queue, health, states, age, expiry, total, free]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
