"""Rate limits for log lines that a client or a failure can repeat at will.

A pool without a service answers every request for it with the same 503; a
peer with the wrong key sends datagram after datagram. One line per cause and
interval, saying how many were left out, keeps the log readable without
hiding that it goes on. Time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class LogLimiter:
    """At most one line per key every ``interval`` seconds; bounded to ``max_keys`` keys."""

    interval: float = 30.0
    max_keys: int = 1024
    _last: dict[Hashable, float] = field(default_factory=dict)
    _held: dict[Hashable, int] = field(default_factory=dict)

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: stay quiet. Otherwise log now; the value is how many lines were left out since the last one."""
        last = self._last.get(key)
        if last is not None and 0.0 <= now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self.max_keys:
            oldest = min(self._last, key=self._last.__getitem__)
            del self._last[oldest]
            self._held.pop(oldest, None)
        self._last[key] = now
        return self._held.pop(key, 0)


def suppressed_note(count: int) -> str:
    """`` (N more like it since the last)``, or nothing."""
    return f" ({count} more like it since the last)" if count else ""
