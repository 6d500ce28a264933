"""Edge qualification: a public address, reachability shown by peers' own pings, low RTT."""

from __future__ import annotations

import random

import pytest

from membership import Membership, NodeMeta, SwimConfig, wire
from membership.messages import Ack, Alive, Ping
from membership.signing import UnsignedIdentity, accept_unsigned
from rmap2p.edge import qualifies_as_edge


@pytest.mark.parametrize(
    ("public", "inbound", "members", "rtt", "expected"),
    [
        (True, 2, 10, 0.012, True),
        (False, 9, 10, 0.001, False),  # no public address: never
        (True, 1, 10, 0.012, False),  # reachable by one peer only, in a pool of ten
        (True, 1, 2, 0.012, True),  # a pool of two: the one other member is enough
        (True, 0, 1, None, False),  # alone: nothing measured yet
        (True, 5, 10, 0.120, False),  # reachable but far away
        (True, 5, 10, None, False),
    ],
)
def test_qualifies_as_edge(public: bool, inbound: int, members: int, rtt: float | None, expected: bool) -> None:
    assert qualifies_as_edge(public, inbound, members, rtt) is expected


def test_machine_measures_inbound_peers_and_probe_rtt() -> None:
    m = Membership(SwimConfig.lan(), UnsignedIdentity("me"), accept_unsigned, ("10.0.0.1", 1), NodeMeta(), random.Random(1), 0.0)
    for i, name in enumerate(("a", "b", "c")):
        rec = Alive(name, 1, "10.0.0.2", 8000 + i, NodeMeta().encode(), bytes(32), bytes(64))
        m.receive(wire.encode_datagram([rec]), ("10.0.0.2", 8000 + i), 0.0)
    m.receive(wire.encode_datagram([Ping(1, "me", "a")]), ("10.0.0.2", 8000), 1.0)
    m.receive(wire.encode_datagram([Ping(2, "me", "b")]), ("10.0.0.2", 8001), 2.0)
    m.receive(wire.encode_datagram([Ping(3, "me", "ghost")]), ("10.0.0.9", 1), 2.0)
    assert m.inbound_peers(now=3.0, window=60.0) == 2, "only known members count"
    assert m.inbound_peers(now=61.5, window=60.0) == 1, "old evidence expires"
    assert m.rtt is None
    # Drive one probe to an ack that carries the target's load (a direct answer).
    while m._probe is None:  # type: ignore[attr-defined]
        m.tick(m.next_deadline())  # type: ignore[arg-type]
    probe = m._probe  # type: ignore[attr-defined]
    m.receive(wire.encode_datagram([Ack(probe.seq, NodeMeta().load)]), ("10.0.0.2", 8000), probe.started + 0.010)
    assert m.rtt == pytest.approx(0.010)
