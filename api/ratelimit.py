"""Per-identity request rate limits: a token bucket per key (users, and failed credentials
per client address), so one user's script cannot starve the server for everyone else.

In memory, per server process: a limit is a guard against floods, not a quota to account.
"""

from __future__ import annotations

import threading
import time

#: Buckets idle this long are dropped (a full bucket carries no state worth keeping).
_IDLE_S = 600.0


class RateLimiter:
    """Token buckets of ``burst`` requests refilled at ``per_s`` per second, per key."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()
        self._swept_at = time.monotonic()

    @property
    def enabled(self) -> bool:
        """Return False when the limit is off (``rate_limit_per_s = 0``)."""
        return self.per_s > 0

    def take(self, key: str) -> float:
        """Spend one request of ``key``; return 0, or the seconds to wait when refused."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.per_s
            self._buckets[key] = (tokens - 1.0, now)
            if now - self._swept_at > _IDLE_S:
                self._sweep(now)
            return 0.0

    def blocked(self, key: str) -> float:
        """Return the seconds ``key`` must wait before its next request (0: none), spending
        nothing."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.per_s

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for key, (_tokens, at) in list(self._buckets.items()):
            if now - at > _IDLE_S:
                del self._buckets[key]
