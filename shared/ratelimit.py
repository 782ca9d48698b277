"""Rate limits per key: token buckets, pure (the caller passes monotonic seconds)."""
from __future__ import annotations


class TokenBucket:
    """Rate limit for one key: `rate` tokens a second, at most `burst` saved up. Pure: the
    caller passes `now` (monotonic seconds)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float, cost: int = 1) -> float:
        """0 if allowed (tokens spent), else the seconds until `cost` tokens are there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (min(cost, self.burst) - self.tokens) / self.rate


class KeyLimiter:
    """One bucket per key id (a process's own count: each replica limits alone), of the size the
    caller names; a bucket whose size changed (a configuration applied) starts anew, full."""

    MAX_KEYS = 10_000  # buckets kept; past it they start full again (keys are few in practice)

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def wait(self, key_id: str, now: float, rate: float, burst: int) -> float:
        """0 if the key may go on now, else the seconds until it may."""
        bucket = self._buckets.get(key_id)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
            if len(self._buckets) >= self.MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key_id] = TokenBucket(rate, burst, now)
        return bucket.take(now)
