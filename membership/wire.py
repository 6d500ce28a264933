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

from collections.abc import Callable, Iterable, Sequence

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
    ReachCheck,
    ReachProbe,
    ReachResult,
    Suspect,
    make_digest_entry,
)
from membership.meta import Load
from membership.state import Status

VERSION = 1
MAX_ID = 64
MAX_HOST = 255
MAX_INT = 2**63 - 1
MAX_META = 4096
MAX_MESSAGES_PER_DATAGRAM = 256
NONCE_BYTES = 16
"""A reachability nonce's exact length (membership/reach.py)."""
MAX_REACH_ERROR = 200


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
            # Digest entries are (node, incarnation, status) tuples, Status an int: msgpack packs them as is.
            return [MessageType.PUSH_PULL, msg.cluster, msg.join, msg.digest]
        case PushPullReply():
            return [MessageType.PUSH_PULL_REPLY, msg.cluster, msg.digest, _states(msg.states)]
        case PushPullStates():
            return [MessageType.PUSH_PULL_STATES, msg.cluster, _states(msg.states)]
        case ReachCheck():
            return [MessageType.REACH_CHECK, msg.node, msg.nonce, msg.host, msg.port]
        case ReachProbe():
            return [MessageType.REACH_PROBE, msg.edge, msg.nonce]
        case ReachResult():
            return [
                MessageType.REACH_RESULT, msg.edge, msg.nonce, msg.udp_sent, msg.tcp_reached,
                msg.error[:MAX_REACH_ERROR], msg.observed_host, msg.observed_port,
            ]
    raise TypeError(f"not a message: {msg!r}")


def _states(states: Sequence[MemberState]) -> list:
    return [[s.alive.body(), int(s.status), s.incarnation] for s in states]


_SMALL_HEADERS = tuple(bytes([VERSION]) + _array_header(n) for n in range(16))


def pack_datagram(encoded: Iterable[bytes]) -> bytes:
    """Join pre-encoded messages into one datagram (caller keeps it under the size limit)."""
    parts = encoded if isinstance(encoded, list) else list(encoded)
    n = len(parts)
    head = _SMALL_HEADERS[n] if n < 16 else bytes([VERSION]) + _array_header(n)
    return head + b"".join(parts)


def encode_datagram(messages: Iterable[Message]) -> bytes:
    return pack_datagram(encode_message(m) for m in messages)


def encode_frame(msg: Message) -> bytes:
    return bytes([VERSION]) + encode_message(msg)


# --------------------------------------------------------------------- decode
#
# Decoding is the hottest path of a node in a big pool (every gossip datagram
# holds several alives it already has), so the field checks are inlined and
# ``type(v) is int`` stands for "an int and not a bool": msgpack yields exact
# ints, strs, bytes and bools, nothing else of those kinds.

class AliveMemo(dict):
    """Decoded alive records keyed by their seven raw fields (see ``decode_datagram``).

    A cache, bounded by starting over at ``limit`` entries: only speed depends on it.
    The simulator shares one among all its nodes, since they all hold the same records.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int = 4096) -> None:
        super().__init__()
        self.limit = limit


def decode_datagram(data: bytes, memo: AliveMemo | None = None) -> list[Message]:
    """All messages of one datagram, or RemoteProtocolError if any part is bad.

    ``memo``, when given, maps the raw fields of alive records already decoded
    to their ``Alive``: decoding is a pure function of those fields, so a hit
    returns what a fresh decode would (the same immutable object), without
    re-checking seven fields for a record the node has seen many times.
    """
    raw = _unpack(data)
    if type(raw) is not list or not raw:
        raise RemoteProtocolError("datagram: expected a non-empty array of messages")
    if len(raw) > MAX_MESSAGES_PER_DATAGRAM:
        raise RemoteProtocolError("datagram: too many messages")
    return [_message(item, memo) for item in raw]


def decode_frame(data: bytes, memo: AliveMemo | None = None) -> Message:
    return _message(_unpack(data), memo)


def _unpack(data: bytes) -> object:
    if not data:
        raise RemoteProtocolError("empty input")
    if data[0] != VERSION:
        raise RemoteProtocolError(f"unknown protocol version {data[0]}")
    try:
        return msgpack.unpackb(memoryview(data)[1:], raw=False, strict_map_key=True, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise RemoteProtocolError(f"undecodable ({type(exc).__name__})") from None


def _message(raw: object, memo: AliveMemo | None = None) -> Message:
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise RemoteProtocolError("message: expected [type, ...]")
    kind = raw[0]
    if kind == MessageType.ALIVE:
        return _alive(raw[1:], memo)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise RemoteProtocolError(f"unknown message type {kind}")
    return decoder(raw[1:], memo)


def _ping(f: list, memo: AliveMemo | None) -> Ping:
    _arity(f, 3, MessageType.PING)
    return Ping(_int(f[0]), _id(f[1]), _id(f[2]))


def _ack(f: list, memo: AliveMemo | None) -> Ack:
    _arity(f, 2, MessageType.ACK)
    return Ack(_int(f[0]), None if f[1] is None else Load.from_wire(f[1]))


def _indirect_ping(f: list, memo: AliveMemo | None) -> IndirectPing:
    _arity(f, 6, MessageType.INDIRECT_PING)
    return IndirectPing(_int(f[0]), _id(f[1]), _host(f[2]), _port(f[3]), _id(f[4]), _bool(f[5]))


def _nack(f: list, memo: AliveMemo | None) -> Nack:
    _arity(f, 1, MessageType.NACK)
    return Nack(_int(f[0]))


def _suspect(f: list, memo: AliveMemo | None) -> Suspect:
    _arity(f, 3, MessageType.SUSPECT)
    return Suspect(_id(f[0]), _int(f[1]), _id(f[2]))


def _load(f: list, memo: AliveMemo | None) -> LoadSummary:
    _arity(f, 5, MessageType.LOAD)
    return LoadSummary(_id(f[0]), _int(f[1]), _int(f[2]), Load.from_wire(f[3]), _bytes(f[4], 128))


def _dead(f: list, memo: AliveMemo | None) -> Dead:
    _arity(f, 3, MessageType.DEAD)
    return Dead(_id(f[0]), _int(f[1]), _id(f[2]))


def _push_pull(f: list, memo: AliveMemo | None) -> PushPull:
    _arity(f, 3, MessageType.PUSH_PULL)
    return PushPull(_text(f[0], MAX_ID), _bool(f[1]), _digest_of(f[2]))


def _push_pull_reply(f: list, memo: AliveMemo | None) -> PushPullReply:
    _arity(f, 3, MessageType.PUSH_PULL_REPLY)
    return PushPullReply(_text(f[0], MAX_ID), _digest_of(f[1]), _states_of(f[2], memo))


def _push_pull_states(f: list, memo: AliveMemo | None) -> PushPullStates:
    _arity(f, 2, MessageType.PUSH_PULL_STATES)
    return PushPullStates(_text(f[0], MAX_ID), _states_of(f[1], memo))


def _nonce(v: object) -> bytes:
    if type(v) is not bytes or len(v) != NONCE_BYTES:  # type: ignore[arg-type]
        raise RemoteProtocolError(f"expected a {NONCE_BYTES}-byte nonce")
    return v  # type: ignore[return-value]


def _reach_check(f: list, memo: AliveMemo | None) -> ReachCheck:
    _arity(f, 4, MessageType.REACH_CHECK)
    return ReachCheck(_id(f[0]), _nonce(f[1]), _host(f[2]), _port(f[3]))


def _reach_probe(f: list, memo: AliveMemo | None) -> ReachProbe:
    _arity(f, 2, MessageType.REACH_PROBE)
    return ReachProbe(_id(f[0]), _nonce(f[1]))


def _reach_result(f: list, memo: AliveMemo | None) -> ReachResult:
    _arity(f, 7, MessageType.REACH_RESULT)
    # The observed port is 0 when the edge could not tell (no peer name on its socket).
    observed_port = f[6]
    if type(observed_port) is not int or not 0 <= observed_port < 65536:
        raise RemoteProtocolError("expected a port number or 0")
    return ReachResult(
        _id(f[0]), _nonce(f[1]), _bool(f[2]), _bool(f[3]), _text(f[4], MAX_REACH_ERROR),
        _text(f[5], MAX_HOST), observed_port,
    )


_REACH_PROBE_HEAD = bytes([VERSION, 0x91, 0x93, MessageType.REACH_PROBE])


def reach_probe_of(data: bytes) -> ReachProbe | None:
    """The reachability probe ``data`` holds, or None for anything else (cheap: gossip's hot path).

    A probe datagram is always encoded alone, so its first four bytes are fixed and a
    gossip datagram is told apart without decoding it.
    """
    if data[:4] != _REACH_PROBE_HEAD:
        return None
    try:
        messages = decode_datagram(data)
    except RemoteProtocolError:
        return None
    return messages[0] if len(messages) == 1 and isinstance(messages[0], ReachProbe) else None


def reach_frame_of(data: bytes) -> ReachCheck | ReachProbe | None:
    """The reachability request a TCP frame holds (a check or a probe), or None for anything else."""
    if len(data) < 4 or data[0] != VERSION or data[2] not in (MessageType.REACH_CHECK, MessageType.REACH_PROBE):
        return None
    try:
        msg = decode_frame(data)
    except RemoteProtocolError:
        return None
    return msg if isinstance(msg, (ReachCheck, ReachProbe)) else None


_DECODERS: dict[int, Callable[[list, AliveMemo | None], Message]] = {
    MessageType.PING: _ping,
    MessageType.ACK: _ack,
    MessageType.INDIRECT_PING: _indirect_ping,
    MessageType.NACK: _nack,
    MessageType.SUSPECT: _suspect,
    MessageType.LOAD: _load,
    MessageType.DEAD: _dead,
    MessageType.PUSH_PULL: _push_pull,
    MessageType.PUSH_PULL_REPLY: _push_pull_reply,
    MessageType.PUSH_PULL_STATES: _push_pull_states,
    MessageType.REACH_CHECK: _reach_check,
    MessageType.REACH_PROBE: _reach_probe,
    MessageType.REACH_RESULT: _reach_result,
}


def _alive(f: list, memo: AliveMemo | None = None) -> Alive:
    if len(f) < 7:
        raise RemoteProtocolError(f"ALIVE: expected 7 fields, got {len(f)}")
    key = None
    if memo is not None and type(f[1]) is int and type(f[3]) is int:
        # Only exact ints in the key: 1, 1.0 and True are equal as dict keys but not as fields.
        key = (f[0], f[1], f[2], f[3], f[4], f[5], f[6])
        try:
            hit = memo.get(key)
        except TypeError:  # an unhashable field (a nested array): the checks below reject it
            hit = key = None
        if hit is not None:
            return hit
    a = Alive(_id(f[0]), _int(f[1]), _host(f[2]), _port(f[3]), _bytes(f[4], MAX_META), _bytes(f[5], 64), _bytes(f[6], 128))
    if key is not None:
        if len(memo) >= memo.limit:  # type: ignore[arg-type, union-attr]
            memo.clear()  # type: ignore[union-attr]
        memo[key] = a  # type: ignore[index]
    return a

_STATUSES = tuple(Status)


def _digest_of(raw: object) -> tuple[DigestEntry, ...]:
    if type(raw) is not list:
        raise RemoteProtocolError("digest: expected an array")
    out = []
    append = out.append
    statuses = _STATUSES
    entry = make_digest_entry
    for e in raw:
        if type(e) is not list or len(e) < 3:
            raise RemoteProtocolError("digest entry: expected [node, incarnation, status]")
        node, inc, st = e[0], e[1], e[2]
        if type(node) is not str or not 0 < len(node) <= MAX_ID:
            raise RemoteProtocolError("expected a node id")
        if type(inc) is not int or not 0 <= inc <= MAX_INT:
            raise RemoteProtocolError("expected a non-negative integer")
        if type(st) is not int or not 0 <= st <= 3:
            raise RemoteProtocolError("expected a member status 0-3")
        append(entry((node, inc, statuses[st])))
    return tuple(out)


def _states_of(raw: object, memo: AliveMemo | None = None) -> tuple[MemberState, ...]:
    if type(raw) is not list:
        raise RemoteProtocolError("states: expected an array")
    out = []
    for s in raw:
        if type(s) is not list or len(s) < 3 or type(s[0]) is not list:
            raise RemoteProtocolError("state: expected [alive, status, incarnation]")
        out.append(MemberState(_alive(s[0], memo), _status(s[1]), _int(s[2])))
    return tuple(out)


def _arity(f: list, n: int, kind: MessageType) -> None:
    # Longer arrays are accepted (trailing fields from a newer version are ignored).
    if len(f) < n:
        raise RemoteProtocolError(f"{kind.name}: expected {n} fields, got {len(f)}")


def _int(v: object) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:  # type: ignore[operator]
        raise RemoteProtocolError("expected a non-negative integer")
    return v  # type: ignore[return-value]


def _port(v: object) -> int:
    if type(v) is not int or not 0 < v < 65536:  # type: ignore[operator]
        raise RemoteProtocolError("expected a port number")
    return v  # type: ignore[return-value]


def _bool(v: object) -> bool:
    if type(v) is not bool:
        raise RemoteProtocolError("expected a boolean")
    return v  # type: ignore[return-value]


def _text(v: object, limit: int) -> str:
    if type(v) is not str or len(v) > limit:  # type: ignore[arg-type]
        raise RemoteProtocolError("expected a short text field")
    return v  # type: ignore[return-value]


def _id(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_ID:  # type: ignore[arg-type]
        raise RemoteProtocolError("expected a node id")
    return v  # type: ignore[return-value]


def _host(v: object) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_HOST:  # type: ignore[arg-type]
        raise RemoteProtocolError("expected a host")
    return v  # type: ignore[return-value]


def _bytes(v: object, limit: int) -> bytes:
    if type(v) is not bytes or len(v) > limit:  # type: ignore[arg-type]
        raise RemoteProtocolError("expected a bounded byte string")
    return v  # type: ignore[return-value]


def _status(v: object) -> Status:
    if type(v) is not int or not 0 <= v <= 3:  # type: ignore[operator]
        raise RemoteProtocolError("expected a member status 0-3")
    return _STATUSES[v]  # type: ignore[index]
