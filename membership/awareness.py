"""Lifeguard local-health awareness (Dadgar et al., "Lifeguard", §IV-A).

A node that misses acks may be the slow one, not its peers. It keeps a
score in ``[0, max_multiplier - 1]``: a failed probe that did not get the
nacks it expected, or having to refute a suspicion of itself, raises the
score; a successful probe lowers it. Probe intervals and ack timeouts are
stretched by ``score + 1``, so a starved node probes more patiently instead
of accusing healthy peers. Pure data: the machine calls it, nothing here reads
a clock.
"""

from __future__ import annotations

from dataclasses import dataclass


def scale_timeout(timeout: float, score: int) -> float:
    """Lifeguard's stretched timeout: ``timeout * (score + 1)``."""
    return timeout * (score + 1)


@dataclass(slots=True)
class Awareness:
    max_multiplier: int
    score: int = 0

    def apply_delta(self, delta: int) -> int:
        """Add ``delta`` and clamp to ``[0, max_multiplier - 1]``; returns the new score."""
        self.score = max(0, min(self.max_multiplier - 1, self.score + delta))
        return self.score

    def scale(self, timeout: float) -> float:
        return scale_timeout(timeout, self.score)
