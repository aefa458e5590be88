"""Calls per second per API key: a token bucket per key.

Each key may make `rate` calls a second on average and `burst` at once; a call finds its
bucket refilled for the time since the last one. Times come from the caller (a monotonic
clock), so the arithmetic is tested exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimits:
    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys

    def allow(self, key: str, now: float) -> bool:
        """Take one call from key's bucket; False when it is empty."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:   # revoked and forgotten keys: start over
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True
