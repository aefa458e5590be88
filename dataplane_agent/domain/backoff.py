"""Reconnect delays: exponential from a minimum to a maximum, with full jitter.

Jitter spreads the reconnects of many agents after a control-plane restart, so they do not
all arrive in the same instant (the server drops calls beyond its pending-request limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    min_s: float
    max_s: float
    failures: int = 0

    def next_delay(self, uniform: Callable[[float, float], float]) -> float:
        """The delay before the next try; uniform(a, b) draws a random number in [a, b]."""
        ceiling = min(self.max_s, self.min_s * (2 ** min(self.failures, 32)))
        self.failures += 1
        return uniform(self.min_s, max(self.min_s, ceiling))

    def reset(self) -> None:
        self.failures = 0
