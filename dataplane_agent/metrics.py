"""Prometheus metrics of one agent, served on an optional port (`fleet agent --metrics-listen`).

The connection calls the hooks (all on the event loop): a session welcomed or ended, a
reconnect, a new attempt launched, a heartbeat written to the stream. The attempts and
pools are not copied on every change: at each scrape the HTTP server's thread asks the
event loop for the launcher's current picture (the launcher is only ever touched on its
own loop), and falls back to the last picture if the loop does not answer in time.

| name | type | labels |
|---|---|---|
| fleet_agent_attempts | gauge | phase (every phase, 0 when none) |
| fleet_agent_launches_total | counter | (attempts launched, not repeated launches) |
| fleet_agent_connected | gauge | 1 while a session with the control plane is up |
| fleet_agent_reconnects_total | counter | sessions that ended or failed and are dialed again |
| fleet_agent_heartbeat_age_seconds | gauge | since the last heartbeat was sent (none yet: absent) |
| fleet_agent_gpus_total, fleet_agent_gpus_free | gauge | pool, tier (reserved, on_demand, spot) |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dataplane_agent.domain.attempt import Phase
from dataplane_agent.launcher.base import Launcher

log = logging.getLogger(__name__)

# How long a scrape waits for the event loop to hand over the launcher's picture.
PICTURE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class _Picture:
    attempts: dict[Phase, int] = field(default_factory=lambda: dict.fromkeys(Phase, 0))
    # (pool, tier) -> (total, free)
    pools: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._launches = Counter(
            "fleet_agent_launches", "Attempts this agent launched (a repeated launch of an "
            "attempt it holds is not counted).", registry=self.registry,
        )
        self._connected = Gauge(
            "fleet_agent_connected", "1 while a session with the control plane is up.",
            registry=self.registry,
        )
        self._reconnects = Counter(
            "fleet_agent_reconnects", "Sessions that ended or could not start, dialed again.",
            registry=self.registry,
        )
        self._view = _LauncherView()
        self.registry.register(self._view)

    # -- hooks for the connection ----------------------------------------------------------

    def launched(self) -> None:
        self._launches.inc()

    def session_started(self) -> None:
        self._connected.set(1)

    def session_ended(self) -> None:
        self._connected.set(0)

    def reconnecting(self) -> None:
        self._reconnects.inc()

    def heartbeat_sent(self) -> None:
        self._view.heartbeat_at = time.monotonic()

    # -- serving ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, listen: str | None, launcher: Launcher) -> AsyncIterator[None]:
        """Serve /metrics on `listen` (HOST:PORT; None: not at all) while the block runs.
        An address that cannot be bound raises OSError before the block starts."""
        self._view.watch(launcher, asyncio.get_running_loop())
        try:
            if not listen:
                yield
                return
            host, _, port = listen.rpartition(":")
            server, thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=self.registry   # [::1]:9101
            )
            log.info("metrics on http://%s:%d/metrics", host, server.server_port)
            try:
                yield
            finally:
                # shutdown() waits for the serving thread's poll loop: off the event loop.
                await asyncio.to_thread(server.shutdown)
                server.server_close()
                thread.join(timeout=5)
        finally:
            self._view.watch(None, None)


class _LauncherView(Collector):
    """Attempts, pools and heartbeat age, read at each scrape."""

    def __init__(self) -> None:
        self.heartbeat_at: float | None = None   # time.monotonic() of the last one sent
        self._launcher: Launcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = _Picture()

    def watch(self, launcher: Launcher | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self._launcher, self._loop = launcher, loop

    def collect(self) -> Iterator[Metric]:
        picture = self._picture()
        attempts = GaugeMetricFamily(
            "fleet_agent_attempts", "Attempts this agent holds, by phase.", labels=["phase"]
        )
        for phase, count in picture.attempts.items():
            attempts.add_metric([phase.value], count)
        yield attempts
        labels = ["pool", "tier"]
        total = GaugeMetricFamily("fleet_agent_gpus_total", "GPUs of each pool.", labels=labels)
        free = GaugeMetricFamily("fleet_agent_gpus_free", "Free GPUs of each pool.", labels=labels)
        for key, (gpus, free_gpus) in picture.pools.items():
            total.add_metric(list(key), gpus)
            free.add_metric(list(key), free_gpus)
        yield total
        yield free
        heartbeat_at = self.heartbeat_at
        if heartbeat_at is not None:
            yield GaugeMetricFamily(
                "fleet_agent_heartbeat_age_seconds",
                "Seconds since this agent last sent a heartbeat.",
                value=time.monotonic() - heartbeat_at,
            )

    def _picture(self) -> _Picture:
        """The launcher's picture, taken on its own event loop (scrapes run in the HTTP
        server's thread); the last one when the loop is gone or too busy to answer."""
        launcher, loop = self._launcher, self._loop
        if launcher is None or loop is None:
            return self._last

        async def take() -> _Picture:
            return _picture_of(launcher)

        step = take()
        try:
            future = asyncio.run_coroutine_threadsafe(step, loop)
        except RuntimeError:   # the loop is closed
            step.close()
            return self._last
        try:
            self._last = future.result(timeout=PICTURE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            log.warning("metrics: the event loop did not answer; serving the last picture")
        return self._last


def _picture_of(launcher: Launcher) -> _Picture:
    phases = Tally(status.phase for status in launcher.statuses())
    return _Picture(
        attempts={phase: phases.get(phase, 0) for phase in Phase},
        pools={
            (pool.name, pool.purchase_type): (pool.gpu_total, pool.gpu_free)
            for pool in launcher.pools()
        },
    )
