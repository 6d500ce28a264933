"""The pure parts of relaying: who relays, which edges, the byte bucket, the wire codec, the scoring penalty."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator import NodeView, rank, score
from allocator.scoring import RELAYED, TIE_BREAK_MAX
from membership import Load, MemberView, NodeMeta, Status
from p2p import relay_wire as rw
from p2p.byte_bucket import ByteBucket
from p2p.relay_server import parse_port_range
from rmap2p.relay_agent import relay_candidates, relay_needed


@pytest.mark.parametrize(
    "mode, reachable, expected",
    [
        ("always", None, True), ("always", True, True), ("never", False, False), ("never", None, False),
        ("auto", None, False), ("auto", True, False), ("auto", False, True),
    ],
)  # fmt: skip
def test_relay_needed(mode: str, reachable: bool | None, expected: bool) -> None:
    assert relay_needed(mode, reachable) is expected


def member(node: str, relay: str = "", relays: tuple[str, ...] = (), status: Status = Status.ALIVE) -> MemberView:
    meta = NodeMeta(name=node, worker_type="edge", relay=relay, relays=relays)
    return MemberView(node, status, 1, ("10.0.0.1", 7946), meta, Load(), None, None)


def test_relay_candidates_are_alive_direct_edges_offering_a_relay_in_a_per_node_order() -> None:
    members = [
        member("a", "10.0.0.1:4000"),
        member("b", "[2001:db8::1]:4000"),
        member("c"),  # offers nothing
        member("d", "10.0.0.4:4000", relays=("a",)),  # relayed itself
        member("e", "10.0.0.5:4000", status=Status.SUSPECT),
        member("f", "not-an-address"),
        member("me", "10.0.0.9:4000"),
    ]
    got = relay_candidates(members, "me")
    assert {c.node_id for c in got} == {"a", "b"}
    assert {c.addr for c in got} == {("10.0.0.1", 4000), ("2001:db8::1", 4000)}
    assert relay_candidates(list(reversed(members)), "me") == got, "order does not depend on the view's order"
    assert [c.node_id for c in relay_candidates(members, "me", exclude=["a"])] == ["b"]
    # Different nodes spread over the edges: over many node ids both edges come first sometimes.
    firsts = {relay_candidates(members[:2], f"n{i}")[0].node_id for i in range(40)}
    assert firsts == {"a", "b"}


def test_byte_bucket_drops_datagrams_and_paces_streams() -> None:
    b = ByteBucket(rate=1000, burst=1500)
    assert b.take(1000, 0.0) and not b.take(1000, 0.0)
    assert b.take(1000, 0.5)  # 500 left + 500 refilled
    s = ByteBucket(rate=1000, burst=1000)
    assert s.reserve(1000, 0.0) == 0.0
    assert s.reserve(2000, 0.0) == pytest.approx(2.0)  # a chunk larger than the burst still goes, later
    assert ByteBucket(rate=0, burst=1).take(10**9, 0.0)


def test_port_range_parsing() -> None:
    assert parse_port_range("40000-40100") == (40000, 40100)
    for bad in ("40000", "4-2", "0-10", "40000-40001", "a-b", "60000-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_relay_messages_round_trip() -> None:
    msgs: list[rw.Message] = [
        rw.Control(), rw.Challenge(b"n" * 16), rw.Hello("abcd", b"k" * 32, b"s" * 64),
        rw.Allocated("203.0.113.5", 40001, 40002, 1.0), rw.Refused("full"),
        rw.DgramOut("10.0.0.1", 7946, b"x" * 1400), rw.DgramIn("::1", 1, b""),
        rw.Open(7, "http", b"t" * 16, "10.0.0.2", 5555), rw.Attach("abcd", 7, b"t" * 16), rw.Ping(), rw.Pong(),
    ]  # fmt: skip
    for m in msgs:
        assert rw.decode(rw.encode(m)) == m


@given(st.binary(max_size=200))
def test_relay_decoder_never_raises_anything_but_its_own_error(data: bytes) -> None:
    try:
        rw.decode(data)
    except rw.RelayProtocolError:
        pass


@pytest.mark.parametrize(
    "raw",
    [[99], [rw.Kind.OPEN, 1, "ftp", b"t" * 16, "h", 1], [rw.Kind.CHALLENGE, b"short"],
     [rw.Kind.DGRAM_IN, "h", 0, b""], [rw.Kind.ALLOCATED, "h", 1, 2, 1e9], [rw.Kind.ATTACH, "n", -1, b"t" * 16],
     [rw.Kind.DGRAM_OUT, "h", 1, b"x" * (rw.MAX_DATAGRAM + 1)], [rw.Kind.HELLO, "n", b"k"]],
)  # fmt: skip
def test_relay_decoder_rejects_bad_fields(raw: list[object]) -> None:
    with pytest.raises(rw.RelayProtocolError):
        rw.decode(msgpack.packb(raw, use_bin_type=True))


def test_a_relayed_member_ranks_below_an_equal_direct_one_but_not_below_a_worse_tier() -> None:
    direct = NodeView("d", "cpu", services=("ner-extraction",), healthy_services=("ner-extraction",))
    relayed = NodeView("r", "cpu", services=("ner-extraction",), healthy_services=("ner-extraction",), relayed=True)
    gap = RELAYED
    assert gap > TIE_BREAK_MAX, "the penalty outweighs any tie-break"
    for seed in range(50):
        assert [n.node_id for n in rank([relayed, direct], "ner-extraction", None, {}, random.Random(seed))] == ["d", "r"]
    # A relayed GPU node with the model loaded still beats a direct CPU node.
    gpu = NodeView("g", "gpu", services=("llm-inference",), loaded_models=("llama3.2",), relayed=True)
    cpu = NodeView("c", "cpu", services=("llm-inference",))
    rng = random.Random(1)
    assert score(gpu, "llm-inference", "llama3.2", 0, rng) > score(cpu, "llm-inference", "llama3.2", 0, rng)
