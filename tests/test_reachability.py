"""The reachability check (issue 16): its verdict rule, its messages, and real daemons asking real edges.

The pure parts (membership/reach.py, the codec) are table-tested. The rest
runs ``Node`` daemons in this process on real loopback UDP and TCP: an edge
reaches a node back on both, a node advertising an address where nothing
listens is judged unreachable, and a pool without an edge says unknown.
Behind a real NAT (network namespaces): tests/test_netns_nat.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import msgpack
import pytest
from test_daemon_memory import KEY, config, free_tcp_port, running, until

from membership import wire
from membership.errors import RemoteProtocolError
from membership.messages import Nack, Ping, ReachCheck, ReachProbe, ReachResult
from membership.reach import EdgeAnswer, Verdict, judge, pick_edges, should_answer
from p2p.keyring import Keyring, load_keyring, save_keyring
from p2p.reachability import ProbeInbox, ask_edge
from rmap2p.daemon import Node

ADDR = ("10.0.0.5", 7946)
NONCE = bytes(range(16))


@pytest.mark.parametrize(
    ("answers", "verdict", "udp", "tcp", "by"),
    [
        ([], Verdict.UNKNOWN, None, None, ()),
        ([EdgeAnswer("e1", False), EdgeAnswer("e2", False)], Verdict.UNKNOWN, None, None, ()),
        ([EdgeAnswer("e1", True, True, True)], Verdict.DIRECT, True, True, ("e1",)),
        ([EdgeAnswer("e1", True, False, False), EdgeAnswer("e2", True, False, False)], Verdict.UNREACHABLE, False, False, ("e1", "e2")),
        # One edge that gets through is enough: a lossy or cut-off edge does not condemn the node.
        ([EdgeAnswer("e1", True, True, True), EdgeAnswer("e2", True, False, False)], Verdict.DIRECT, True, True, ("e1", "e2")),
        # Both ways are needed: gossip is UDP, push-pull and the gateway are TCP.
        ([EdgeAnswer("e1", True, True, False)], Verdict.UNREACHABLE, True, False, ("e1",)),
        ([EdgeAnswer("e1", True, False, True), EdgeAnswer("e2", False)], Verdict.UNREACHABLE, False, True, ("e1",)),
        # What a silent edge claims to have seen does not count.
        ([EdgeAnswer("e1", False, True, True), EdgeAnswer("e2", True, False, False)], Verdict.UNREACHABLE, False, False, ("e2",)),
    ],
)
def test_verdict(answers: list[EdgeAnswer], verdict: Verdict, udp: bool | None, tcp: bool | None, by: tuple[str, ...]) -> None:
    r = judge(ADDR, answers)
    assert (r.verdict, r.udp, r.tcp, r.checked_by) == (verdict, udp, tcp, by)
    assert r.needs_relay == (verdict is Verdict.UNREACHABLE)
    assert r.direct == (verdict is not Verdict.UNREACHABLE)  # unknown counts as direct
    assert r.reachable == {Verdict.DIRECT: True, Verdict.UNREACHABLE: False, Verdict.UNKNOWN: None}[verdict]


def test_verdict_words() -> None:
    direct = judge(ADDR, [EdgeAnswer("e1", True, True, True), EdgeAnswer("e2", True, True, True)])
    assert direct.describe("n1") == "node n1: directly reachable at 10.0.0.5:7946 (checked by edges e1,e2)"
    behind = judge(ADDR, [EdgeAnswer("e1", True, observed=("11.213.7.254", 40001))])
    assert behind.describe("n1") == (
        "node n1: not reachable from outside at 10.0.0.5:7946: UDP no, TCP no; needs a relay "
        "(checked by edges e1; edges see us as 11.213.7.254:40001)"
    )
    assert behind.to_json()["verdict"] == "unreachable" and behind.to_json()["observed"] == "11.213.7.254:40001"
    assert "unknown" in judge(ADDR, []).describe("n1")


def test_edges_are_picked_by_the_seed_not_the_view_order_and_never_self() -> None:
    cands = [(f"e{i}", ("10.0.0.1", 7000 + i)) for i in range(6)]
    a = pick_edges(cands, "e3", random.Random(7))
    b = pick_edges(list(reversed(cands)), "e3", random.Random(7))
    assert a == b and len(a) == 2 and all(e != "e3" for e, _ in a)
    assert pick_edges([("me", ADDR)], "me", random.Random(1)) == []
    assert len(pick_edges(cands[:2], "x", random.Random(1), k=5)) == 2


def test_edges_answer_known_members_a_few_at_a_time() -> None:
    assert should_answer(True, 0, 8) is None
    assert "not a member" in (should_answer(False, 0, 8) or "")
    assert "in flight" in (should_answer(True, 8, 8) or "")


@pytest.mark.parametrize(
    "msg",
    [
        ReachCheck("n1", NONCE, "192.168.77.13", 7946),
        ReachCheck("n1", NONCE, "fd00::1", 1),
        ReachProbe("e1", NONCE),
        ReachResult("e1", NONCE, True, False, "tcp: refused", "11.213.7.254", 40001),
        ReachResult("e1", NONCE, False, False, "", "", 0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_reach_messages_round_trip(msg: object) -> None:
    assert wire.decode_frame(wire.encode_frame(msg)) == msg  # type: ignore[arg-type]


def test_probes_are_told_from_gossip_without_decoding_it() -> None:
    probe = ReachProbe("e1", NONCE)
    assert wire.reach_probe_of(wire.encode_datagram([probe])) == probe
    assert wire.reach_probe_of(wire.encode_datagram([Ping(1, "a", "b")])) is None
    assert wire.reach_probe_of(wire.encode_datagram([Nack(13)])) is None
    assert wire.reach_probe_of(wire.encode_datagram([probe, probe])) is None  # a probe travels alone
    assert wire.reach_probe_of(b"") is None
    assert wire.reach_frame_of(wire.encode_frame(ReachCheck("n", NONCE, "h", 1))) == ReachCheck("n", NONCE, "h", 1)
    assert wire.reach_frame_of(wire.encode_frame(ReachResult("e", NONCE, True, True, "", "h", 1))) is None
    assert wire.reach_frame_of(wire.encode_frame(Ping(1, "a", "b"))) is None


@pytest.mark.parametrize(
    "fields, why",
    [
        ([12, "n", bytes(15), "h", 1], "nonce"),
        ([12, "n", bytes(17), "h", 1], "nonce"),
        ([12, "n", NONCE, "h", 0], "port"),
        ([12, "n", NONCE, "", 1], "host"),
        ([13, "e"], "expected"),
        ([14, "e", NONCE, 1, True, "", "h", 1], "boolean"),
        ([14, "e", NONCE, True, True, "x" * 201, "h", 1], "text"),
        ([14, "e", NONCE, True, True, "", "h", 70000], "port"),
    ],
)
def test_bad_reach_messages_are_rejected(fields: list[object], why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        wire.decode_frame(bytes([wire.VERSION]) + msgpack.packb(fields))


async def test_the_inbox_records_only_probes_it_expects() -> None:
    inbox = ProbeInbox(limit=2)
    inbox.expect(NONCE)
    assert not inbox.arrived(ReachProbe("e", bytes(16)), "udp")
    assert inbox.arrived(ReachProbe("e", NONCE), "udp") and inbox.seen(NONCE) == {"udp"}
    inbox.expect(b"a" * 16)
    inbox.expect(b"b" * 16)  # over the limit: the oldest check goes
    assert inbox.seen(NONCE) == set() and not inbox.arrived(ReachProbe("e", NONCE), "tcp")


# ------------------------------------------------------------------ real daemons on loopback


def udp_node(tmp_path: Path, name: str, **kw: object) -> Node:
    # The default transport factory: real UDP, so that a probe datagram really reaches the gossip socket.
    return Node(config(tmp_path, name, reach_interval=3600.0, **kw))


async def test_an_edge_reaches_a_node_back_on_udp_and_tcp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rmap2p.reach_monitor")
    edge = udp_node(tmp_path, "edge", worker_type="edge")
    node = udp_node(tmp_path, "node", worker_type="cpu", join=(edge.config.bind,))
    changes = []
    node.on_reachability(changes.append)
    # The edge first: a node that finds nobody at its seed checks too early, with no edge to ask.
    async with running([edge]), running([node]):
        await until(lambda: node.reach.checks >= 1, 20, "the node's first check")
        r = node.reachability
        edge_id = edge.machine.id  # type: ignore[union-attr]
        assert (r.verdict, r.udp, r.tcp, r.checked_by) == (Verdict.DIRECT, True, True, (edge_id,)), r
        assert r.observed is not None and r.observed[0] == "127.0.0.1"
        assert changes == [r]
        # The edge has no other edge to ask: unknown, treated as direct.
        await until(lambda: edge.reach.checks >= 1, 20, "the edge's first check")
        assert edge.reachability.verdict is Verdict.UNKNOWN and edge.reachability.direct
        # Asked again, same answer: no change announced.
        assert (await node.reach.check_now()).verdict is Verdict.DIRECT
        assert len(changes) == 1
    text = caplog.text
    me = node.machine.id  # type: ignore[union-attr]
    assert f"node {me}: directly reachable at {node.config.bind[0]}:{node.config.bind[1]} (checked by edges {edge_id})" in text
    assert f"node {edge_id}: reachability unknown: no edge node in the pool" in text


async def test_a_node_nobody_can_reach_is_told_it_needs_a_relay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rmap2p.reach_monitor")
    edge = udp_node(tmp_path, "edge", worker_type="edge")
    edge2 = udp_node(tmp_path, "edge2", worker_type="edge", join=(edge.config.bind,))
    # It advertises a port where nothing listens, as a node behind NAT advertises its private address.
    hidden = ("127.0.0.1", free_tcp_port())
    node = udp_node(tmp_path, "hidden", worker_type="cpu", join=(edge.config.bind,), advertise=hidden)
    async with running([edge, edge2]):
        await until(lambda: len([m for m in edge.members() if m.status.label == "alive"]) == 2, 20, "two edges")
        async with running([node]):
            await until(lambda: node.reach.checks >= 1, 30, "the hidden node's first check")
            r = node.reachability
            assert (r.verdict, r.udp, r.tcp) == (Verdict.UNREACHABLE, False, False), r
            # The edge it joined through answers; the other one only once gossip told it of the newcomer.
            assert r.needs_relay and edge.machine.id in r.checked_by  # type: ignore[union-attr]
            assert set(r.checked_by) <= {edge.machine.id, edge2.machine.id}  # type: ignore[union-attr]
            assert r.address == hidden
    assert f"node {node.machine.id}: not reachable from outside at 127.0.0.1:{hidden[1]}: UDP no, TCP no; needs a relay" in caplog.text  # type: ignore[union-attr]


async def test_edges_ignore_checks_from_strangers(tmp_path: Path) -> None:
    edge = udp_node(tmp_path, "edge", worker_type="edge")
    async with running([edge]):
        answer = await ask_edge("edge", edge.config.bind, "stranger", ("127.0.0.1", 9), ProbeInbox(), timeout=3.0)
        assert not answer.answered and "without a complete reply" in answer.error


async def test_no_check_when_disabled(tmp_path: Path) -> None:
    edge = udp_node(tmp_path, "edge", worker_type="edge")
    node = Node(config(tmp_path, "node", worker_type="cpu", join=(edge.config.bind,), reach_interval=0.0))
    async with running([edge, node]):
        await until(lambda: node.settled.is_set(), 20, "the join")
        await asyncio.sleep(1.0)
        assert node.reach.checks == 0 and node.reachability.verdict is Verdict.UNKNOWN


async def test_sealed_probes_open_only_in_the_pool_they_were_meant_for(tmp_path: Path) -> None:
    """With a keyring every check, probe and answer is sealed; a node with another key learns nothing."""
    ours, theirs = tmp_path / "ours.keys", tmp_path / "theirs.keys"
    save_keyring(ours, Keyring.single(KEY))
    save_keyring(theirs, Keyring.single(bytes(reversed(KEY))))
    edge = udp_node(tmp_path, "edge", worker_type="edge", key_file=ours)
    node = udp_node(tmp_path, "node", worker_type="cpu", join=(edge.config.bind,), key_file=ours)
    async with running([edge]), running([node]):
        await until(lambda: node.reach.checks >= 1, 20, "the keyed node's first check")
        r = node.reachability
        assert (r.verdict, r.udp, r.tcp) == (Verdict.DIRECT, True, True), r
        # Another pool's node asks our edge in its own name: refused before anything is probed.
        answer = await ask_edge(
            "edge", edge.config.bind, node.machine.id, node.config.bind, ProbeInbox(),  # type: ignore[union-attr]
            sealer=load_keyring(theirs), timeout=3.0,
        )
        assert not answer.answered and "cannot authenticate" in answer.error
