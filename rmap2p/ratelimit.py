"""Per-client rate limits: one token bucket per client key, in a bounded table.

Mechanism. Each client (a token id, or a remote address) has a bucket of
``burst`` tokens refilled at ``rate`` per second; a request takes one token
or is refused with the seconds until one is back (``Retry-After``). The
table holds at most ``max_clients`` buckets; the least recently used goes
first. An evicted client starts again with a full bucket, so a flood from
more addresses than the table holds costs each of them at most ``burst``
requests per eviction cycle: the bound is on memory, the limit is per client.

Pure: the caller passes ``now`` (any monotonic seconds).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` requests per second sustained, ``burst`` at once; ``rate`` 0 turns limiting off."""

    rate: float = 50.0
    burst: int = 100
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or self.max_clients < 1:
            raise ValueError("rate must be >= 0, burst and max_clients >= 1")

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``RATE[/BURST]`` (e.g. ``50/100``; ``0`` or ``off`` disables); burst defaults to 2 × rate."""
        text = text.strip().lower()
        if text in ("0", "off", "none"):
            return cls(rate=0.0)
        rate_text, _, burst_text = text.partition("/")
        try:
            rate = float(rate_text)
            if not math.isfinite(rate):
                raise ValueError
            burst = int(burst_text) if burst_text else max(1, math.ceil(2 * rate))
        except ValueError:
            raise ValueError(f"rate limit must be RATE[/BURST] with finite numbers, e.g. 50/100, got {text!r}") from None
        return cls(rate=rate, burst=burst)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, client: str, now: float) -> float:
        """0.0 when ``client`` may go ahead (one token taken), else the seconds until it may."""
        lim = self.limit
        if not lim.enabled:
            return 0.0
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = _Bucket(float(lim.burst), now)
            self._buckets[client] = bucket
            while len(self._buckets) > lim.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(lim.burst), bucket.tokens + elapsed * lim.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / lim.rate

    def __len__(self) -> int:
        return len(self._buckets)
