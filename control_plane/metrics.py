"""Prometheus metrics of the control plane (being written: see issue 9).

Interface the rest of the control plane relies on:

    metrics = ControlPlaneMetrics(...)
    metrics.placed(latencies_s)                 # scheduler: submit -> placement, per job
    metrics.attempts_ended(phase, reason, n)    # an attempt reached a final phase
    metrics.heartbeat_handled(seconds)          # one agent report applied
    body, content_type = await metrics.render() # the /metrics page, gauges refreshed
"""

from __future__ import annotations
