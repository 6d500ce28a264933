"""The wire codec: messages ↔ bytes, pure (no sockets), shared by daemon and simulator.

A datagram is ``VERSION`` (one byte) followed by one msgpack array of
messages; each message is an array ``[type, field, ...]``. Messages are
encoded one at a time so that the packer can fill a datagram up to
``max_datagram`` bytes: a msgpack array is only a header followed by its
elements, so pre-encoded messages are joined behind a fresh header. A stream
frame (TCP push-pull) is ``VERSION`` followed by one message.

Decoding returns typed messages or raises ``RemoteProtocolError``. It never
sizes an allocation from a peer's number: msgpack's limits default to the
input length, and every field is type- and range-checked here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgpack

from membership.errors import RemoteProtocolError
from membership.messages import (
    Ack,
    Alive,
    Dead,
    DigestEntry,
    IndirectPing,
    LoadSummary,
    MemberState,
    Message,
    MessageType,
    Nack,
    Ping,
    PushPull,
    PushPullReply,
    PushPullStates,
    Suspect,
)
from membership.meta import Load
from membership.state import Status

VERSION = 1
MAX_ID = 64
MAX_HOST = 255
MAX_INT = 2**63 - 1
MAX_META = 4096
MAX_MESSAGES_PER_DATAGRAM = 256


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


ARRAY_HEADER_MAX = 3  # room to reserve for the header of a datagram's array


# --------------------------------------------------------------------- encode


def encode_message(msg: Message) -> bytes:
    """One message as a msgpack array (no version byte)."""
    if isinstance(msg, Alive):
        cached = msg._cache.get("wire")
        if cached is None:
            cached = msg._cache["wire"] = msgpack.packb([MessageType.ALIVE, *msg.body()], use_bin_type=True)
        return cached
    return msgpack.packb(_fields(msg), use_bin_type=True)


def _fields(msg: Message) -> list:
    match msg:
        case Ping():
            return [MessageType.PING, msg.seq, msg.target, msg.source]
        case Ack():
            return [MessageType.ACK, msg.seq, msg.load.to_wire() if msg.load else None]
        case IndirectPing():
            return [
                MessageType.INDIRECT_PING,
                msg.seq,
                msg.target,
                msg.target_host,
                msg.target_port,
                msg.source,
                msg.want_nack,
            ]
        case Nack():
            return [MessageType.NACK, msg.seq]
        case Suspect():
            return [MessageType.SUSPECT, msg.node, msg.incarnation, msg.accuser]
        case LoadSummary():
            return [MessageType.LOAD, msg.node, msg.incarnation, msg.seq, msg.load.to_wire(), msg.signature]
        case Dead():
            return [MessageType.DEAD, msg.node, msg.incarnation, msg.accuser]
        case PushPull():
            return [MessageType.PUSH_PULL, msg.cluster, msg.join, _digest(msg.digest)]
        case PushPullReply():
            return [MessageType.PUSH_PULL_REPLY, msg.cluster, _digest(msg.digest), _states(msg.states)]
        case PushPullStates():
            return [MessageType.PUSH_PULL_STATES, msg.cluster, _states(msg.states)]
    raise TypeError(f"not a message: {msg!r}")


def _digest(entries: Sequence[DigestEntry]) -> list:
    return [[e.node, e.incarnation, int(e.status)] for e in entries]


def _states(states: Sequence[MemberState]) -> list:
    return [[s.alive.body(), int(s.status), s.incarnation] for s in states]


def pack_datagram(encoded: Iterable[bytes]) -> bytes:
    """Join pre-encoded messages into one datagram (caller keeps it under the size limit)."""
    parts = list(encoded)
    return bytes([VERSION]) + _array_header(len(parts)) + b"".join(parts)


def encode_datagram(messages: Iterable[Message]) -> bytes:
    return pack_datagram(encode_message(m) for m in messages)


def encode_frame(msg: Message) -> bytes:
    return bytes([VERSION]) + encode_message(msg)


# --------------------------------------------------------------------- decode


def decode_datagram(data: bytes) -> list[Message]:
    """All messages of one datagram, or RemoteProtocolError if any part is bad."""
    raw = _unpack(data)
    if not isinstance(raw, list) or not raw:
        raise RemoteProtocolError("datagram: expected a non-empty array of messages")
    if len(raw) > MAX_MESSAGES_PER_DATAGRAM:
        raise RemoteProtocolError("datagram: too many messages")
    return [_message(item) for item in raw]


def decode_frame(data: bytes) -> Message:
    return _message(_unpack(data))


def _unpack(data: bytes) -> object:
    if not data:
        raise RemoteProtocolError("empty input")
    if data[0] != VERSION:
        raise RemoteProtocolError(f"unknown protocol version {data[0]}")
    try:
        return msgpack.unpackb(memoryview(data)[1:], raw=False, strict_map_key=True, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RemoteProtocolError(f"undecodable ({type(exc).__name__})") from None


def _message(raw: object) -> Message:
    if not isinstance(raw, list) or not raw or not _is_int(raw[0]):
        raise RemoteProtocolError("message: expected [type, ...]")
    try:
        kind = MessageType(raw[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {raw[0]}") from None
    f = raw[1:]
    match kind:
        case MessageType.PING:
            _arity(f, 3, kind)
            return Ping(_int(f[0]), _id(f[1]), _id(f[2]))
        case MessageType.ACK:
            _arity(f, 2, kind)
            return Ack(_int(f[0]), None if f[1] is None else Load.from_wire(f[1]))
        case MessageType.INDIRECT_PING:
            _arity(f, 6, kind)
            return IndirectPing(_int(f[0]), _id(f[1]), _host(f[2]), _port(f[3]), _id(f[4]), _bool(f[5]))
        case MessageType.NACK:
            _arity(f, 1, kind)
            return Nack(_int(f[0]))
        case MessageType.ALIVE:
            return _alive(f)
        case MessageType.SUSPECT:
            _arity(f, 3, kind)
            return Suspect(_id(f[0]), _int(f[1]), _id(f[2]))
        case MessageType.LOAD:
            _arity(f, 5, kind)
            return LoadSummary(_id(f[0]), _int(f[1]), _int(f[2]), Load.from_wire(f[3]), _bytes(f[4], 128))
        case MessageType.DEAD:
            _arity(f, 3, kind)
            return Dead(_id(f[0]), _int(f[1]), _id(f[2]))
        case MessageType.PUSH_PULL:
            _arity(f, 3, kind)
            return PushPull(_text(f[0], MAX_ID), _bool(f[1]), _digest_of(f[2]))
        case MessageType.PUSH_PULL_REPLY:
            _arity(f, 3, kind)
            return PushPullReply(_text(f[0], MAX_ID), _digest_of(f[1]), _states_of(f[2]))
        case MessageType.PUSH_PULL_STATES:
            _arity(f, 2, kind)
            return PushPullStates(_text(f[0], MAX_ID), _states_of(f[1]))
    raise RemoteProtocolError(f"unhandled message type {kind}")  # pragma: no cover


def _alive(f: list) -> Alive:
    _arity(f, 7, MessageType.ALIVE)
    meta = _bytes(f[4], MAX_META)
    return Alive(_id(f[0]), _int(f[1]), _host(f[2]), _port(f[3]), meta, _bytes(f[5], 64), _bytes(f[6], 128))


def _digest_of(raw: object) -> tuple[DigestEntry, ...]:
    if not isinstance(raw, list):
        raise RemoteProtocolError("digest: expected an array")
    out = []
    for e in raw:
        if not isinstance(e, list) or len(e) < 3:
            raise RemoteProtocolError("digest entry: expected [node, incarnation, status]")
        out.append(DigestEntry(_id(e[0]), _int(e[1]), _status(e[2])))
    return tuple(out)


def _states_of(raw: object) -> tuple[MemberState, ...]:
    if not isinstance(raw, list):
        raise RemoteProtocolError("states: expected an array")
    out = []
    for s in raw:
        if not isinstance(s, list) or len(s) < 3 or not isinstance(s[0], list):
            raise RemoteProtocolError("state: expected [alive, status, incarnation]")
        out.append(MemberState(_alive(s[0]), _status(s[1]), _int(s[2])))
    return tuple(out)


def _arity(f: list, n: int, kind: MessageType) -> None:
    # Longer arrays are accepted (trailing fields from a newer version are ignored).
    if len(f) < n:
        raise RemoteProtocolError(f"{kind.name}: expected {n} fields, got {len(f)}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: object) -> int:
    if not _is_int(v) or not 0 <= v <= MAX_INT:  # type: ignore[operator]
        raise RemoteProtocolError("expected a non-negative integer")
    return v  # type: ignore[return-value]


def _port(v: object) -> int:
    if not _is_int(v) or not 0 < v < 65536:  # type: ignore[operator]
        raise RemoteProtocolError("expected a port number")
    return v  # type: ignore[return-value]


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise RemoteProtocolError("expected a boolean")
    return v


def _text(v: object, limit: int) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise RemoteProtocolError("expected a short text field")
    return v


def _id(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_ID:
        raise RemoteProtocolError("expected a node id")
    return v


def _host(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_HOST:
        raise RemoteProtocolError("expected a host")
    return v


def _bytes(v: object, limit: int) -> bytes:
    if not isinstance(v, bytes) or len(v) > limit:
        raise RemoteProtocolError("expected a bounded byte string")
    return v


def _status(v: object) -> Status:
    if not _is_int(v) or not 0 <= v <= 3:  # type: ignore[operator]
        raise RemoteProtocolError("expected a member status 0-3")
    return Status(v)
