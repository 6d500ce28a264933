"""The codec: every message round-trips; hostile bytes only ever raise RemoteProtocolError."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from membership import wire
from membership.config import LOAD_SUMMARY_BYTES
from membership.errors import RemoteProtocolError
from membership.messages import (
    Ack,
    Alive,
    Dead,
    DigestEntry,
    IndirectPing,
    LoadSummary,
    MemberState,
    MessageType,
    Nack,
    Ping,
    PushPull,
    PushPullReply,
    PushPullStates,
    Suspect,
)
from membership.meta import Load, NodeMeta, ReplicationClaim
from membership.state import Status

META = NodeMeta(
    name="gpu-box",
    worker_type="gpu",
    http="127.0.0.1:8080",
    capabilities=("llm-inference", "vision-ocr"),
    services=(("llm-inference", "healthy"),),
    loaded_models=("llama3.2",),
    specialization="vllm",
    load=Load(12, 40, 65, 2),
)
ALIVE = Alive("abcd", 7, "10.1.2.3", 7946, META.encode(), bytes(32), bytes(64))

MESSAGES = [
    Ping(1, "target", "source"),
    Ack(2, Load(1, 2, 3, 4)),
    Ack(3, None),
    IndirectPing(4, "t", "::1", 7946, "s", True),
    Nack(5),
    ALIVE,
    Suspect("n", 3, "acc"),
    LoadSummary("n", 3, 17, Load(90, 50, 0, 12), bytes(64)),
    Dead("n", 3, "n"),
    PushPull("rmap2p", True, (DigestEntry("a", 1, Status.ALIVE), DigestEntry("b", 2, Status.DEAD))),
    PushPullReply("rmap2p", (DigestEntry("a", 1, Status.SUSPECT),), (MemberState(ALIVE, Status.SUSPECT, 8),)),
    PushPullStates("c", (MemberState(ALIVE, Status.LEFT, 9),)),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    assert wire.decode_frame(wire.encode_frame(msg)) == msg  # type: ignore[arg-type]


def test_compound_datagram_round_trip_and_size() -> None:
    data = wire.encode_datagram(MESSAGES[:9])
    assert wire.decode_datagram(data) == MESSAGES[:9]
    ping = wire.encode_datagram([Ping(1, "a" * 16, "b" * 16)])
    assert len(ping) < 48, "a ping must stay small: it is most of the steady-state traffic"


def test_a_load_summary_costs_what_the_gossip_budget_assumes() -> None:
    # Largest fields: a 16-hex-digit id, big incarnation and seq, every figure at its widest.
    worst = LoadSummary("f" * 16, 2**31, 2**31, Load(100, 100, 100, 2**31 - 1), bytes(64))
    assert len(wire.encode_message(worst)) <= LOAD_SUMMARY_BYTES
    assert len(wire.encode_message(worst)) < len(wire.encode_message(ALIVE)) / 2


def test_meta_round_trip_and_forward_compatibility() -> None:
    assert NodeMeta.decode(META.encode()) == META
    newer = msgpack.packb(msgpack.unpackb(META.encode()) + ["a field from the future"])
    assert NodeMeta.decode(newer) == META


def test_replication_claims_round_trip_and_old_encodings_decode_without_them() -> None:
    meta = dataclasses.replace(
        META,
        service_ports=(("redis", 40001),),
        replication=(ReplicationClaim("redis", 3, True, "primary"), ReplicationClaim("postgres", 2, False, "replica")),
    )
    assert NodeMeta.decode(meta.encode()) == meta
    assert meta.claim_of("postgres") == ReplicationClaim("postgres", 2, False, "replica")
    assert meta.claim_of("chromadb") is None
    # What a node of the previous release sends (11 fields): no claims, not an error.
    old = msgpack.packb(msgpack.unpackb(meta.encode())[:11])
    assert NodeMeta.decode(old).replication == ()
    # A newer claim with a trailing field still decodes; what an old decoder does with ours is
    # the forward-compatibility test above (it reads the first 11 fields only).
    raw = msgpack.unpackb(meta.encode())
    raw[11][0].append("future")
    assert NodeMeta.decode(msgpack.packb(raw)) == meta


def test_relay_fields_round_trip_and_old_encodings_decode_as_direct() -> None:
    edge = dataclasses.replace(META, worker_type="edge", relay="11.213.7.11:7950")
    carried = dataclasses.replace(META, relays=("e1e1e1e1", "e2e2e2e2"))
    assert NodeMeta.decode(edge.encode()) == edge and edge.reach == "direct"
    assert NodeMeta.decode(carried.encode()) == carried and carried.reach == "relayed"
    # A node of the release before relays sends 12 fields: no relay offered, reached directly.
    old = NodeMeta.decode(msgpack.packb(msgpack.unpackb(carried.encode())[:12]))
    assert (old.relay, old.relays, old.reach) == ("", (), "direct")
    # Field 13 alone (a relay-less decoder's neighbour in between) is fine too.
    assert NodeMeta.decode(msgpack.packb(msgpack.unpackb(edge.encode())[:13])) == edge


@pytest.mark.parametrize(
    "index, value, why",
    [
        (12, 7946, "relay"),
        (12, "h" * 400, "relay"),
        (13, "e1", "relays"),
        (13, [1], "relays"),
        (13, [""], "relays"),
        (13, ["x" * 200], "relays"),
        (13, [f"e{i}" for i in range(5)], "relays"),
    ],
)
def test_bad_relay_fields_are_rejected(index: int, value: object, why: str) -> None:
    raw = msgpack.unpackb(META.encode())
    raw[index] = value
    with pytest.raises(RemoteProtocolError, match=why):
        NodeMeta.decode(msgpack.packb(raw))


@pytest.mark.parametrize(
    "claims, why",
    [
        ("redis", "list"),
        ([["redis", 1, True]], "expected"),
        ([["", 1, True, ""]], "service"),
        ([["x" * 65, 1, True, ""]], "service"),
        ([["redis", -1, True, ""]], "epoch"),
        ([["redis", 2**40, True, ""]], "epoch"),
        ([["redis", True, True, ""]], "epoch"),
        ([["redis", 1, 1, ""]], "boolean"),
        ([["redis", 1, True, "leader"]], "role"),
        ([["redis", 1, True, ""], ["redis", 2, False, ""]], "two"),
        ([[f"s{i}", 1, False, ""] for i in range(17)], "at most"),
    ],
)
def test_bad_replication_claims_are_rejected(claims: object, why: str) -> None:
    raw = msgpack.unpackb(META.encode())
    raw[11] = claims
    with pytest.raises(RemoteProtocolError, match=why):
        NodeMeta.decode(msgpack.packb(raw))


def test_load_progress_round_trips_and_old_encodings_decode_without_it() -> None:
    meta = dataclasses.replace(META, loading=(("llm-inference", 42), ("rag-embeddings", 0)))
    assert NodeMeta.decode(meta.encode()) == meta
    assert meta.loading_of("llm-inference") == 42 and meta.loading_of("ner-extraction") is None
    # What a node of the previous release sends (12 fields): nothing loading, not an error.
    old = msgpack.packb(msgpack.unpackb(meta.encode())[:12])
    assert NodeMeta.decode(old).loading == ()
    assert NodeMeta.decode(old) == dataclasses.replace(meta, loading=())
    # The field costs one byte when nothing loads, and the name plus 3 bytes per loading service.
    assert len(META.encode()) - len(msgpack.packb(msgpack.unpackb(META.encode())[:14])) == 1
    assert len(meta.encode()) - len(META.encode()) == sum(len(name) + 3 for name, _ in meta.loading)


@pytest.mark.parametrize(
    "loading, why",
    [
        ("llm-inference", "loading"),
        ([["llm-inference", 101]], "loading"),
        ([["llm-inference", -1]], "loading"),
        ([["llm-inference", True]], "loading"),
        ([["llm-inference", 4.5]], "loading"),
        ([["", 4]], "loading"),
        ([["llm-inference"]], "loading"),
        ([[f"s{i}", 1] for i in range(33)], "at most"),
    ],
)
def test_bad_load_progress_is_rejected(loading: object, why: str) -> None:
    raw = msgpack.unpackb(META.encode())
    raw[14] = loading
    with pytest.raises(RemoteProtocolError, match=why):
        NodeMeta.decode(msgpack.packb(raw))


def test_unknown_version_and_type_are_rejected() -> None:
    good = wire.encode_datagram([Nack(1)])
    with pytest.raises(RemoteProtocolError, match="version"):
        wire.decode_datagram(bytes([99]) + good[1:])
    with pytest.raises(RemoteProtocolError, match="unknown message type"):
        wire.decode_datagram(bytes([wire.VERSION]) + msgpack.packb([[250, 1]]))


def test_huge_length_claims_do_not_allocate() -> None:
    # An array header announcing 4 billion elements, a bin header announcing 4 GiB.
    for evil in (b"\xdd\xff\xff\xff\xff", b"\x91\xc6\xff\xff\xff\xff", b"\x91\xdb\xff\xff\xff\xff"):
        with pytest.raises(RemoteProtocolError):
            wire.decode_datagram(bytes([wire.VERSION]) + evil)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    for decode in (wire.decode_datagram, wire.decode_frame):
        try:
            decode(data)
        except RemoteProtocolError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_datagrams_only_raise_remote_protocol_error(data: st.DataObject) -> None:
    base = bytearray(wire.encode_datagram(MESSAGES[:6]))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(base) - 1))
        base[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(base)))
    try:
        wire.decode_datagram(bytes(base[:cut]))
    except RemoteProtocolError:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 12), st.lists(msgpack_values, max_size=9))
def test_well_formed_msgpack_of_wrong_shape_is_rejected_cleanly(kind: int, fields: list) -> None:
    data = bytes([wire.VERSION]) + msgpack.packb([[kind, *fields]])
    try:
        wire.decode_datagram(data)
    except RemoteProtocolError:
        pass


def test_the_alive_memo_returns_what_a_fresh_decode_would() -> None:
    memo = wire.AliveMemo(limit=4)
    data = wire.encode_datagram([ALIVE, ALIVE])
    first = wire.decode_datagram(data, memo)
    again = wire.decode_datagram(data, memo)
    assert first == again == wire.decode_datagram(data) == [ALIVE, ALIVE]
    assert again[0] is first[0], "a hit is the very object decoded before"
    # A field that only compares equal to a memoized one (7.0 == 7, True == 1) is still rejected.
    one = Alive("abcd", 1, "10.1.2.3", 7946, META.encode(), bytes(32), bytes(64))
    wire.decode_datagram(wire.encode_datagram([one]), memo)
    for record, bad in ((ALIVE, 7.0), (one, True)):
        raw = msgpack.packb([[MessageType.ALIVE, record.node, bad, *record.body()[2:]]], use_bin_type=True)
        with pytest.raises(RemoteProtocolError):
            wire.decode_datagram(bytes([wire.VERSION]) + raw, memo)
    # Unhashable junk in a field is a protocol error, not a TypeError from the memo.
    raw = msgpack.packb([[MessageType.ALIVE, ALIVE.node, 1, ["x"], 1, b"", b"", b""]], use_bin_type=True)
    with pytest.raises(RemoteProtocolError):
        wire.decode_datagram(bytes([wire.VERSION]) + raw, memo)
    # Bounded: it starts over rather than grow.
    for i in range(10):
        wire.decode_datagram(wire.encode_datagram([Alive(f"n{i}", 1, "10.0.0.1", 7946, b"", bytes(32), bytes(64))]), memo)
    assert len(memo) <= 4
