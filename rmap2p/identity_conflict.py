"""Two daemons with one identity (a copied data dir): which one stops.

The membership core reports a ``conflict`` event when it hears a signed alive
record of its own node id from another address. Both daemons hear of each
other and must come to opposite verdicts without talking, so the rule is a
total order on what both see in the records:

- the younger daemon (later ``started_at``, whole seconds) is the copy and yields;
- equal start seconds: the one at the higher address (``host:port`` compared as
  text, written the same way on both sides) yields.

Exactly one of two daemons at different addresses yields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DaemonClaim:
    """What a daemon's alive record says about it: when it started and where it runs."""

    started_at: int
    address: str


def this_daemon_yields(mine: DaemonClaim, other: DaemonClaim) -> bool:
    """True if the daemon making ``mine`` should stop in favour of the one making ``other``."""
    if mine.started_at != other.started_at:
        return mine.started_at > other.started_at
    return mine.address > other.address
