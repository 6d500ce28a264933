"""Whether an ``--type auto`` node with a public address should serve as an edge node.

A public address alone does not make a good edge node: it must be reachable
from others (they open contact to it, not only it to them) and close to
them. A candidate therefore starts as its fallback type and is promoted once
the membership protocol has shown both, from its own first-hand figures:

    qualifies = public address
                and inbound_peers >= min(EDGE_MIN_INBOUND, members - 1) >= 1
                and smoothed probe RTT <= EDGE_MAX_RTT

``inbound_peers`` counts distinct members whose own pings reached us in the
last ``window`` seconds; the RTT is that of our direct probes. An operator
who knows better says ``--type edge`` (never promoted nor demoted).

Demotion. An auto-promoted edge keeps the type while

    keeps = members <= 1                      (alone: no evidence either way)
            or (inbound_peers >= 1 and (rtt is None or rtt <= EDGE_DEMOTE_RTT))

and goes back to its fallback type once ``keeps`` has been false at every
check for ``hold`` seconds. Three things keep it from flapping: the bands
(promotion needs two peers and 50 ms, keeping needs one peer and 75 ms), the
hold time, and re-promotion after a demotion, which also needs ``qualifies``
to hold for ``hold`` seconds (the first promotion is immediate, as before).
:func:`next_edge_state` is the whole rule, pure, with time as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

EDGE_MAX_RTT = 0.050
"""Seconds: the seeds' edge example measured 12 ms; 50 ms still keeps routing hops cheap."""
EDGE_DEMOTE_RTT = 0.075
"""Seconds: 1.5 x EDGE_MAX_RTT, so an RTT hovering at the limit does not flip the type."""
EDGE_MIN_INBOUND = 2
EDGE_WINDOW = 60.0


@dataclass(frozen=True)
class EdgeTimings:
    """The time constants of the rule; tests and small labs shorten them (``--edge-window``)."""

    window: float = EDGE_WINDOW
    """Seconds of evidence: a peer's ping older than this no longer counts as reaching us."""
    hold: float = EDGE_WINDOW
    """Seconds the evidence must contradict the current type before it changes (after the first promotion)."""

    def __post_init__(self) -> None:
        if self.window <= 0 or self.hold < 0:
            raise ValueError("edge window must be > 0 and hold >= 0")

    @property
    def check_interval(self) -> float:
        """How often the daemon evaluates the rule: often enough to sample a hold several times."""
        return max(0.5, min(5.0, self.window / 4))


@dataclass(frozen=True)
class EdgeEvidence:
    """What the membership machine measured, at one instant."""

    inbound_peers: int
    members: int
    rtt: float | None


@dataclass(frozen=True)
class EdgeState:
    """Where a candidate stands. ``reason`` says why the type last changed (for the log)."""

    is_edge: bool = False
    contrary_since: float | None = None
    """When the evidence started to contradict ``is_edge`` (None: it agrees)."""
    demoted_once: bool = False
    reason: str = ""


def qualifies_as_edge(public: bool, inbound_peers: int, members: int, rtt: float | None) -> bool:
    needed = min(EDGE_MIN_INBOUND, members - 1)
    return public and needed >= 1 and inbound_peers >= needed and rtt is not None and rtt <= EDGE_MAX_RTT


def demotion_reason(ev: EdgeEvidence, window: float) -> str | None:
    """Why an edge no longer deserves the type, or None while it still does (``keeps`` above)."""
    if ev.members <= 1:
        return None
    if ev.inbound_peers < 1:
        return f"no peer's ping reached us in the last {window:.0f} s"
    if ev.rtt is not None and ev.rtt > EDGE_DEMOTE_RTT:
        return f"smoothed probe RTT {ev.rtt * 1000:.1f} ms above {EDGE_DEMOTE_RTT * 1000:.0f} ms"
    return None


def next_edge_state(state: EdgeState, ev: EdgeEvidence, now: float, timings: EdgeTimings) -> EdgeState:
    """The candidate's state after one check at ``now`` (see the module docstring for the rule)."""
    if state.is_edge:
        why = demotion_reason(ev, timings.window)
        if why is None:
            return replace(state, contrary_since=None)
        since = now if state.contrary_since is None else state.contrary_since
        if now - since >= timings.hold:
            return EdgeState(is_edge=False, contrary_since=None, demoted_once=True, reason=why)
        return replace(state, contrary_since=since)
    if not qualifies_as_edge(True, ev.inbound_peers, ev.members, ev.rtt):
        return replace(state, contrary_since=None)
    reason = (
        f"public address, reached by {ev.inbound_peers} peers, probe RTT {(ev.rtt or 0) * 1000:.1f} ms"
    )
    if not state.demoted_once:
        return EdgeState(is_edge=True, contrary_since=None, demoted_once=False, reason=reason)
    since = now if state.contrary_since is None else state.contrary_since
    if now - since >= timings.hold:
        return EdgeState(is_edge=True, contrary_since=None, demoted_once=True, reason=reason)
    return replace(state, contrary_since=since)
