"""Suspicion timers with Lifeguard's confirmation-driven acceleration.

When a member is suspected we start a timer between ``min_timeout`` and
``max_timeout``. It starts at the maximum and shrinks logarithmically as
*independent* confirmations arrive (suspect messages about the same member
from other nodes): with ``k`` expected confirmations, after ``c`` of them the
timeout is::

    timeout(c) = max(min_timeout,
                     max_timeout - (max_timeout - min_timeout) * log(c + 1) / log(k + 1))

so a member that many nodes independently fail to reach is declared dead at
``min_timeout``, while an accusation from a single (perhaps starved) node
leaves the accused the whole ``max_timeout`` to refute. With ``k < 1`` the
timeout is ``min_timeout`` outright. The base timeout scales with the size
of the cluster::

    suspicion_timeout(mult, n, interval) = mult * max(1, log10(max(1, n))) * interval

These are memberlist's ``suspicionTimeout`` and ``remainingSuspicionTime``.
The timer is data: the machine asks for its ``deadline`` and fires it when
``now`` passes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def suspicion_timeout(mult: float, n: int, interval: float) -> float:
    """Base suspicion timeout: ``mult * max(1, log10(max(1, n))) * interval``."""
    node_scale = max(1.0, math.log10(max(1, n)))
    return mult * node_scale * interval


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Time left before the suspicion fires, after ``confirmations`` of ``k`` expected.

    ``max(min, max - (max - min) * log(c + 1) / log(k + 1)) - elapsed``; may be negative.
    """
    if k < 1:
        return min_timeout - elapsed
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    timeout = max(min_timeout, max_timeout - (max_timeout - min_timeout) * frac)
    return timeout - elapsed


@dataclass(slots=True)
class Suspicion:
    """One running suspicion timer about one member at one incarnation."""

    incarnation: int
    start: float
    k: int
    min_timeout: float
    max_timeout: float
    confirmed_by: set[str] = field(default_factory=set)
    deadline: float = 0.0
    last_chance: bool = False
    """Whether the suspect has had its final direct check (see ``Membership``)."""

    @classmethod
    def begin(
        cls, incarnation: int, accuser: str | None, now: float, k: int, min_timeout: float, max_timeout: float
    ) -> Suspicion:
        """Start the timer. ``accuser`` None: the suspicion came by anti-entropy, with no witness
        named; the first accuser heard of later is then the claim, not a confirmation."""
        # The first accuser does not count as a confirmation: it is the claim itself.
        s = cls(incarnation, now, k, min_timeout, max_timeout, set() if accuser is None else {accuser})
        s.deadline = now + remaining_suspicion_time(0, k, 0.0, min_timeout, max_timeout)
        return s

    @property
    def confirmations(self) -> int:
        return max(0, len(self.confirmed_by) - 1)

    def confirm(self, accuser: str) -> bool:
        """Record an independent accusation; True when it is new information.

        Only new accusers count (and they are worth re-gossiping); once ``k``
        confirmations are in, more cannot shorten the timer further.
        """
        if self.confirmations >= self.k or accuser in self.confirmed_by:
            return False
        self.confirmed_by.add(accuser)
        if len(self.confirmed_by) == 1:
            return True  # the claim of a suspicion that came by anti-entropy: news, not a confirmation
        self.deadline = self.start + remaining_suspicion_time(
            self.confirmations, self.k, 0.0, self.min_timeout, self.max_timeout
        )
        return True
