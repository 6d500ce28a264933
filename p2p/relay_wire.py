"""The relay's control and attach messages: frozen dataclasses and their msgpack codec (pure).

Every message travels as one frame of :mod:`p2p.stream` (a 4-byte length and
the payload sealed with the cluster keyring under :func:`relay_aad`, or plain
when the pool has no keyring). A payload is a msgpack array whose first item
is the :class:`Kind`; decoding checks every field's type and bound and raises
:class:`RelayProtocolError` on anything else, so a peer never sizes an
allocation or raises into the loop.

The conversation (see :mod:`p2p.relay_server` for the whole design)::

    node -> relay   CONTROL                         (a new control connection)
    relay -> node   CHALLENGE nonce
    node -> relay   HELLO node_id public_key sig    (sig over hello_payload(cluster, nonce))
    relay -> node   ALLOCATED host gossip_port http_port keepalive | REFUSED reason
    then, both ways, any number of
    node -> relay   DGRAM_OUT host port data        (send data from the allocation to host:port)
    relay -> node   DGRAM_IN host port data         (data arrived at the allocation from host:port)
    relay -> node   OPEN stream_id kind token host port   (a TCP connection arrived at an allocation)
    node -> relay   PING / relay -> node PONG        (keepalive)

    node -> relay   ATTACH node_id stream_id token  (first frame of a fresh connection; then raw bytes)

Kinds are append-only, like the membership message types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import msgpack

HELLO_LABEL = b"rmap2p/relay-hello/1\x00"
RELAY_AAD_PREFIX = b"rmap2p/relay/"
NONCE_BYTES = 16
TOKEN_BYTES = 16
MAX_TEXT = 256
MAX_DATAGRAM = 64 * 1024
STREAM_KINDS = ("gossip", "http")


def relay_aad(cluster: str) -> bytes:
    """Associated data of relay frames: ``b"rmap2p/relay/" + cluster``.

    A label of its own, so a relay frame never opens as a push-pull frame or a
    gossip datagram of the same cluster, and the reverse.
    """
    return RELAY_AAD_PREFIX + cluster.encode()


def hello_payload(cluster: str, nonce: bytes) -> bytes:
    """What a node signs to prove to a relay which node id it is (the relay's fresh nonce: no replay)."""
    return HELLO_LABEL + cluster.encode() + b"\x00" + nonce


class RelayProtocolError(Exception):
    """A relay frame that does not decode to a valid message (the peer's fault)."""


class Kind(IntEnum):
    """Message types. APPEND ONLY: never renumber or reuse a value."""

    CONTROL = 1
    CHALLENGE = 2
    HELLO = 3
    ALLOCATED = 4
    REFUSED = 5
    DGRAM_OUT = 6
    DGRAM_IN = 7
    OPEN = 8
    ATTACH = 9
    PING = 10
    PONG = 11


@dataclass(frozen=True, slots=True)
class Control:
    pass


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    node_id: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Allocated:
    host: str
    gossip_port: int
    http_port: int
    keepalive: float
    """Seconds between the node's pings; the relay drops a control connection silent for 3 of them."""


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


@dataclass(frozen=True, slots=True)
class DgramOut:
    host: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DgramIn:
    host: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Open:
    stream_id: int
    kind: str
    token: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Attach:
    node_id: str
    stream_id: int
    token: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


Message = Control | Challenge | Hello | Allocated | Refused | DgramOut | DgramIn | Open | Attach | Ping | Pong


def encode(msg: Message) -> bytes:
    match msg:
        case Control():
            body: list[object] = [Kind.CONTROL]
        case Challenge(nonce):
            body = [Kind.CHALLENGE, nonce]
        case Hello(node_id, public_key, signature):
            body = [Kind.HELLO, node_id, public_key, signature]
        case Allocated(host, gp, hp, keepalive):
            body = [Kind.ALLOCATED, host, gp, hp, float(keepalive)]
        case Refused(reason):
            body = [Kind.REFUSED, reason[:MAX_TEXT]]
        case DgramOut(host, port, data):
            body = [Kind.DGRAM_OUT, host, port, data]
        case DgramIn(host, port, data):
            body = [Kind.DGRAM_IN, host, port, data]
        case Open(sid, kind, token, host, port):
            body = [Kind.OPEN, sid, kind, token, host, port]
        case Attach(node_id, sid, token):
            body = [Kind.ATTACH, node_id, sid, token]
        case Ping():
            body = [Kind.PING]
        case Pong():
            body = [Kind.PONG]
        case _:
            raise TypeError(f"not a relay message: {msg!r}")
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Message:
    """The message in ``data``; raises :class:`RelayProtocolError` when it is not a valid one."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=0, max_array_len=8)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RelayProtocolError(f"undecodable relay frame ({type(exc).__name__})") from None
    if not isinstance(raw, list) or not raw or not _is_int(raw[0]):
        raise RelayProtocolError("relay frame: expected [kind, ...]")
    try:
        kind = Kind(raw[0])
    except ValueError:
        raise RelayProtocolError(f"relay frame: unknown kind {raw[0]}") from None
    f = raw[1:]
    if kind is Kind.CONTROL:
        return Control()
    if kind is Kind.PING:
        return Ping()
    if kind is Kind.PONG:
        return Pong()
    if kind is Kind.CHALLENGE:
        _need(f, 1)
        return Challenge(_bytes(f[0], NONCE_BYTES, exact=True))
    if kind is Kind.HELLO:
        _need(f, 3)
        return Hello(_text(f[0]), _bytes(f[1], 64), _bytes(f[2], 128))
    if kind is Kind.ALLOCATED:
        _need(f, 4)
        keepalive = f[3]
        if not isinstance(keepalive, (int, float)) or isinstance(keepalive, bool) or not 0.05 <= keepalive <= 300:
            raise RelayProtocolError("relay frame: keepalive out of range")
        return Allocated(_text(f[0]), _port(f[1]), _port(f[2]), float(keepalive))
    if kind is Kind.REFUSED:
        _need(f, 1)
        return Refused(_text(f[0]))
    if kind is Kind.DGRAM_OUT or kind is Kind.DGRAM_IN:
        _need(f, 3)
        cls = DgramOut if kind is Kind.DGRAM_OUT else DgramIn
        return cls(_text(f[0]), _port(f[1]), _bytes(f[2], MAX_DATAGRAM))
    if kind is Kind.OPEN:
        _need(f, 5)
        if f[1] not in STREAM_KINDS:
            raise RelayProtocolError("relay frame: unknown stream kind")
        return Open(_stream_id(f[0]), f[1], _bytes(f[2], TOKEN_BYTES, exact=True), _text(f[3]), _port(f[4]))
    _need(f, 3)  # ATTACH
    return Attach(_text(f[0]), _stream_id(f[1]), _bytes(f[2], TOKEN_BYTES, exact=True))


def _need(fields: list[object], n: int) -> None:
    if len(fields) < n:
        raise RelayProtocolError(f"relay frame: expected {n} fields, got {len(fields)}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_TEXT:
        raise RelayProtocolError("relay frame: text field of wrong type or length")
    return v


def _bytes(v: object, limit: int, exact: bool = False) -> bytes:
    if not isinstance(v, bytes) or len(v) > limit or (exact and len(v) != limit):
        raise RelayProtocolError("relay frame: bytes field of wrong type or length")
    return v


def _port(v: object) -> int:
    if not _is_int(v) or not 0 < v < 65536:  # type: ignore[operator]
        raise RelayProtocolError("relay frame: port out of range")
    return v  # type: ignore[return-value]


def _stream_id(v: object) -> int:
    if not _is_int(v) or not 0 <= v < 2**63:  # type: ignore[operator]
        raise RelayProtocolError("relay frame: stream id out of range")
    return v  # type: ignore[return-value]
