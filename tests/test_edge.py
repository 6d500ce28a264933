"""Edge qualification and demotion: a public address, reachability shown by peers' own pings, low RTT."""

from __future__ import annotations

import random

import pytest

from membership import Membership, NodeMeta, SwimConfig, wire
from membership.messages import Ack, Alive, Ping
from membership.signing import UnsignedIdentity, accept_unsigned
from rmap2p.edge import (
    EDGE_DEMOTE_RTT,
    EdgeEvidence,
    EdgeState,
    EdgeTimings,
    demotion_reason,
    next_edge_state,
    qualifies_as_edge,
)


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


@pytest.mark.parametrize(
    ("inbound", "members", "rtt", "reason"),
    [
        (1, 10, 0.060, None),  # one peer and 60 ms: not enough to promote, enough to keep (the band)
        (0, 10, 0.012, "no peer's ping reached us in the last 60 s"),
        (3, 10, 0.080, "smoothed probe RTT 80.0 ms above 75 ms"),
        (0, 1, None, None),  # alone: no evidence either way
        (2, 3, None, None),
        (0, 2, 0.200, "no peer's ping reached us in the last 60 s"),  # the first reason found is given
    ],
)
def test_demotion_reason(inbound: int, members: int, rtt: float | None, reason: str | None) -> None:
    assert demotion_reason(EdgeEvidence(inbound, members, rtt), 60.0) == reason


GOOD = EdgeEvidence(3, 5, 0.010)
UNREACHED = EdgeEvidence(0, 5, 0.010)
FAR = EdgeEvidence(3, 5, 0.200)
T = EdgeTimings(window=60.0, hold=60.0)


def run(state: EdgeState, steps: list[tuple[float, EdgeEvidence]]) -> list[bool]:
    """The type after each check (True: edge)."""
    out = []
    for now, ev in steps:
        state = next_edge_state(state, ev, now, T)
        out.append(state.is_edge)
    return out


def test_first_promotion_is_immediate() -> None:
    state = next_edge_state(EdgeState(), GOOD, 5.0, T)
    assert state.is_edge and "reached by 3 peers" in state.reason


def test_demotion_needs_the_loss_sustained_for_the_hold_time() -> None:
    edge = EdgeState(is_edge=True)
    # Lost at 100 s; still edge at 159 s; demoted at the first check 60 s after the loss began.
    assert run(edge, [(100.0, UNREACHED), (130.0, UNREACHED), (159.0, UNREACHED), (160.0, UNREACHED)]) == [
        True, True, True, False,
    ]
    state = edge
    for now in (100.0, 160.0):
        state = next_edge_state(state, FAR, now, T)
    assert not state.is_edge and state.demoted_once
    assert state.reason == "smoothed probe RTT 200.0 ms above 75 ms"


def test_a_good_check_in_between_restarts_the_hold() -> None:
    edge = EdgeState(is_edge=True)
    steps = [(100.0, UNREACHED), (150.0, GOOD), (155.0, UNREACHED), (210.0, UNREACHED), (215.0, UNREACHED)]
    assert run(edge, steps) == [True, True, True, True, False]


def test_rtt_between_the_bands_neither_promotes_nor_demotes() -> None:
    between = EdgeEvidence(3, 5, (0.050 + EDGE_DEMOTE_RTT) / 2)
    assert run(EdgeState(), [(t, between) for t in (0.0, 100.0, 200.0)]) == [False] * 3
    assert run(EdgeState(is_edge=True), [(t, between) for t in (0.0, 100.0, 200.0)]) == [True] * 3


def test_re_promotion_after_a_demotion_waits_the_hold_time() -> None:
    demoted = EdgeState(is_edge=False, demoted_once=True)
    assert run(demoted, [(0.0, GOOD), (30.0, GOOD), (59.0, GOOD), (60.0, GOOD)]) == [False, False, False, True]
    # Evidence that comes and goes (a flapping link) never flips the type back.
    flapping = [(t, GOOD if i % 2 == 0 else UNREACHED) for i, t in enumerate(range(0, 600, 5))]
    assert not any(run(demoted, flapping))


def test_edge_timings_validate() -> None:
    with pytest.raises(ValueError):
        EdgeTimings(window=0.0)
    assert EdgeTimings(window=8.0).check_interval == 2.0
    assert EdgeTimings().check_interval == 5.0


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
