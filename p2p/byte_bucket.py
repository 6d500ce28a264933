"""A token bucket counted in bytes: what a relay lets one carried member move per second.

Mechanism. The bucket holds up to ``burst`` bytes and refills at ``rate``
bytes per second. A datagram either fits now (:meth:`ByteBucket.take`) or is
dropped, as a congested link would drop it; a stream chunk instead waits for
its bytes (:meth:`ByteBucket.reserve` returns how long), which is TCP-like
backpressure: the splice sleeps, stops reading, and the sender's window fills.
``rate`` 0 means unlimited.

Pure: the caller passes ``now`` (any monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ByteBucket:
    rate: float
    """Bytes per second sustained; 0: unlimited."""
    burst: float
    """Bytes that may pass at once after a quiet spell (at least one largest chunk)."""
    level: float = -1.0
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst <= 0:
            raise ValueError("rate must be >= 0 and burst > 0")
        if self.level < 0:
            self.level = self.burst

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now

    def take(self, n: int, now: float) -> bool:
        """Take ``n`` bytes if they are there now; False (nothing taken) when they are not."""
        if self.rate == 0:
            return True
        self._refill(now)
        if self.level >= n:
            self.level -= n
            return True
        return False

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` bytes, going into debt if need be; returns the seconds to wait before sending them.

        ``n`` larger than ``burst`` is allowed (the debt is simply longer), so a
        chunk never waits forever.
        """
        if self.rate == 0:
            return 0.0
        self._refill(now)
        self.level -= n
        return 0.0 if self.level >= 0 else -self.level / self.rate
