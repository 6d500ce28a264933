"""Whether an ``--type auto`` node with a public address should serve as an edge node.

A public address alone does not make a good edge node: it must be reachable
from others (they open contact to it, not only it to them) and close to
them. A candidate therefore starts as its fallback type and is promoted once
the membership protocol has shown both, from its own first-hand figures:

    qualifies = public address
                and inbound_peers >= min(EDGE_MIN_INBOUND, members - 1) >= 1
                and smoothed probe RTT <= EDGE_MAX_RTT

``inbound_peers`` counts distinct members whose own pings reached us in the
last ``EDGE_WINDOW`` seconds; the RTT is that of our direct probes. An
operator who knows better says ``--type edge``.
"""

from __future__ import annotations

EDGE_MAX_RTT = 0.050
"""Seconds: the seeds' edge example measured 12 ms; 50 ms still keeps routing hops cheap."""
EDGE_MIN_INBOUND = 2
EDGE_WINDOW = 60.0


def qualifies_as_edge(public: bool, inbound_peers: int, members: int, rtt: float | None) -> bool:
    needed = min(EDGE_MIN_INBOUND, members - 1)
    return public and needed >= 1 and inbound_peers >= needed and rtt is not None and rtt <= EDGE_MAX_RTT
