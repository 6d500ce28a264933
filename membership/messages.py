"""Protocol messages: frozen, slotted dataclasses, one per message type.

``MessageType`` is APPEND-ONLY: its numbers are on the wire. Never reuse or
renumber a value; add new types at the end and bump nothing else (a node
drops types it does not know, counted, as it drops any malformed input).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import msgpack

from membership.meta import Load, NodeMeta
from membership.state import Status


class MessageType(IntEnum):
    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    PUSH_PULL = 8
    PUSH_PULL_REPLY = 9
    PUSH_PULL_STATES = 10
    LOAD = 11
    REACH_CHECK = 12
    REACH_PROBE = 13
    REACH_RESULT = 14


Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    source: str


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to ping ``target`` for us and relay the ack (SWIM's ping-req)."""

    seq: int
    target: str
    target_host: str
    target_port: int
    source: str
    want_nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    load: Load | None = None
    """First-hand load of the acking node; None on relayed acks."""


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the relay could not reach the target, but it can reach us."""

    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """A node's own, signed claim: it is alive at ``incarnation`` with this address and metadata."""

    node: str
    incarnation: int
    host: str
    port: int
    meta_raw: bytes
    public_key: bytes
    signature: bytes
    # Decoded metadata and the encoded message are computed once and shared;
    # the simulator shares one Alive object among all nodes that hold it.
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @property
    def addr(self) -> Addr:
        return (self.host, self.port)

    def signed_payload(self) -> bytes:
        return signed_alive_payload(self.node, self.incarnation, self.host, self.port, self.meta_raw)

    @property
    def meta(self) -> NodeMeta:
        meta = self._cache.get("meta")
        if meta is None:
            meta = self._cache["meta"] = NodeMeta.decode(self.meta_raw)
        return meta

    def body(self) -> list:
        return [self.node, self.incarnation, self.host, self.port, self.meta_raw, self.public_key, self.signature]


def signed_alive_payload(node: str, incarnation: int, host: str, port: int, meta_raw: bytes) -> bytes:
    """The bytes a node signs for its alive message (domain-separated)."""
    return b"rmap2p-alive\x00" + msgpack.packb([node, incarnation, host, port, meta_raw], use_bin_type=True)


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """A node's own, signed coarse load, gossiped between alive messages (see DESIGN, "Load").

    Much smaller than an alive (no metadata, no key) and ordered by ``seq``
    within one incarnation; receivers check it against the key of the
    node's alive record.
    """

    node: str
    incarnation: int
    seq: int
    load: Load
    signature: bytes

    def signed_payload(self) -> bytes:
        return signed_load_payload(self.node, self.incarnation, self.seq, self.load)


def signed_load_payload(node: str, incarnation: int, seq: int, load: Load) -> bytes:
    """The bytes a node signs for its load summary (domain-separated from alive)."""
    return b"rmap2p-load\x00" + msgpack.packb([node, incarnation, seq, load.to_wire()], use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Suspect:
    """``accuser == node`` names no witness: a suspicion passed on from anti-entropy, which
    starts a timer but never counts as an independent confirmation."""

    node: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    """``accuser == node`` means the node left gracefully."""

    node: str
    incarnation: int
    accuser: str


class DigestEntry(NamedTuple):
    """What a push-pull digest says of one member. A tuple, not a dataclass: a digest holds
    one per member, and msgpack packs a tuple as the array the wire wants."""

    node: str
    incarnation: int
    status: Status


make_digest_entry = functools.partial(tuple.__new__, DigestEntry)
"""``make_digest_entry((node, incarnation, status))``: a DigestEntry without the named tuple's
Python-level ``__new__`` (a push-pull builds and decodes one per member)."""


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as a push-pull carries it: its latest signed alive plus our verdict on it."""

    alive: Alive
    status: Status
    incarnation: int


@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy request: the sender's digest. The reply carries what the sender lacks."""

    cluster: str
    join: bool
    digest: tuple[DigestEntry, ...]


@dataclass(frozen=True, slots=True)
class PushPullReply:
    cluster: str
    digest: tuple[DigestEntry, ...]
    states: tuple[MemberState, ...]


@dataclass(frozen=True, slots=True)
class PushPullStates:
    """Third leg: what the responder lacked, judged from its digest."""

    cluster: str
    states: tuple[MemberState, ...]


@dataclass(frozen=True, slots=True)
class ReachCheck:
    """TCP request to an edge: "reach me back at ``host:port`` (UDP and TCP) and show me ``nonce``".

    ``node`` is the asker; the edge answers only members it knows (membership/reach.py).
    """

    node: str
    nonce: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ReachProbe:
    """What the edge sends to the address it was asked to reach: one UDP datagram, one TCP frame.

    The asker answers the TCP frame with the same probe, so the edge knows its frame got through.
    """

    edge: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class ReachResult:
    """The edge's answer to a ``ReachCheck``: what it sent, what its TCP probe met, and where the
    asker's request came from (``observed_*``: the asker's address as seen from outside, after NAT)."""

    edge: str
    nonce: bytes
    udp_sent: bool
    tcp_reached: bool
    error: str
    observed_host: str
    observed_port: int


Message = (
    Ping
    | IndirectPing
    | Ack
    | Nack
    | Alive
    | LoadSummary
    | Suspect
    | Dead
    | PushPull
    | PushPullReply
    | PushPullStates
    | ReachCheck
    | ReachProbe
    | ReachResult
)
