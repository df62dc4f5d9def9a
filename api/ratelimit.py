"""Request rate per credential: a token bucket per key, in this worker process.

Buckets live in one process's memory, so the limit holds per worker: N workers behind a
load balancer let a key through up to N times its rate. That is the price of sharing
nothing but the object store; it still stops a runaway client from flooding a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_MAX_BUCKETS = 100_000  # distinct keys held; past it all are forgotten (each may burst once more)


class RateLimiter:
    """Not thread-safe: used from the event loop's thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, rate_per_s: float, burst: float | None = None) -> float:
        """Spend one token of ``key``'s bucket (``burst`` deep, refilled at ``rate_per_s``).
        Returns 0 if the request may go ahead, else the seconds until a token is there."""
        depth = max(1.0, float(burst if burst is not None else rate_per_s))
        now = self._clock()
        tokens, at = self._buckets.get(key, (depth, now))
        tokens = min(depth, tokens + (now - at) * rate_per_s)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate_per_s
        if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0
