"""Signed routes: a gateway proves that a forwarded request comes from a current member.

Mechanism. When a gateway forwards a request to another node's gateway it
adds, next to ``X-Rmap2p-Route: <target id>`` and ``X-Rmap2p-Hops: n``, a
signature header made with its Ed25519 node identity (p2p/identity.py)::

    X-Rmap2p-Signature: 1.<signer id>.<unix ms>.<nonce hex>.<base64url signature>

over the canonical JSON list ``["rmap2p-route", 1, METHOD, path?query,
target, hops, unix ms, nonce, signer]``. The receiving gateway serves the
request as a peer's only when (in this order, each failure a ``reason``):

1. the header is there (``unsigned``) and parses (``malformed``);
2. the target is the receiving node itself (``wrong-target``): a request
   signed for B is worthless at C;
3. the signer is a current member, alive or suspect, in the receiver's view
   (``not-a-member``): its public key comes from the member's signed alive
   record, and the node id is a hash of that key;
4. the timestamp is within ``window`` seconds of the receiver's clock
   (``stale``); hosts are expected to run NTP;
5. the Ed25519 signature verifies (``bad-signature``);
6. the (signer, nonce) pair was not seen before (``replayed``).

The replay cache is bounded: when full, the oldest entry is dropped and its
timestamp becomes a floor below which everything is refused (``replayed``),
so eviction never reopens a replay; under a flood the effective window
shrinks instead. Ed25519 signatures are deterministic, which is why the
nonce exists: two identical requests in the same millisecond stay distinct.

The body is not signed: the gateway streams it and cannot hash it first.
What the signature stops is an outsider passing a request off as a peer's
(skipping client tokens and rate limits) and any replay of a real one.

Pure: no aiohttp, no clock; the caller passes ``now`` (Unix seconds).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from p2p.identity import verify

ROUTE_HEADER = "X-Rmap2p-Route"
HOPS_HEADER = "X-Rmap2p-Hops"
SIGNATURE_HEADER = "X-Rmap2p-Signature"
SIGNATURE_VERSION = 1
WINDOW = 30.0
"""Seconds a signed route stays acceptable, either side of the receiver's clock."""
REPLAY_CACHE = 65536
"""(signer, nonce) pairs remembered; beyond this the oldest go and the floor rises."""
NONCE_BYTES = 8
MAX_HEADER = 256
"""A signature header is about 140 characters; anything much longer is refused unparsed."""


class Signer(Protocol):
    """What signing needs from a node identity (p2p.identity.NodeIdentity)."""

    @property
    def node_id(self) -> str: ...

    def sign(self, payload: bytes) -> bytes: ...


def signed_payload(method: str, path: str, target: str, hops: int, ts_ms: int, nonce: str, signer: str) -> bytes:
    """The bytes the route signature covers (a JSON list: unambiguous whatever the fields hold)."""
    doc = ["rmap2p-route", SIGNATURE_VERSION, method.upper(), path, target, hops, ts_ms, nonce, signer]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_route_headers(
    identity: Signer, method: str, path: str, target: str, hops: int, now: float, nonce: bytes | None = None
) -> dict[str, str]:
    """The headers a gateway adds when it forwards a request to ``target``'s gateway.

    ``path`` is the request target as sent on the wire, query included
    (yarl's ``url.raw_path_qs``); ``hops`` the value sent in
    ``X-Rmap2p-Hops``; ``now`` Unix seconds (``time.time()``). Returns
    ``X-Rmap2p-Route``, ``X-Rmap2p-Hops`` and ``X-Rmap2p-Signature``.
    """
    ts_ms = int(now * 1000)
    nonce_hex = (nonce if nonce is not None else os.urandom(NONCE_BYTES)).hex()
    signer = identity.node_id
    sig = identity.sign(signed_payload(method, path, target, hops, ts_ms, nonce_hex, signer))
    text = base64.urlsafe_b64encode(sig).rstrip(b"=").decode("ascii")
    return {
        ROUTE_HEADER: target,
        HOPS_HEADER: str(hops),
        SIGNATURE_HEADER: f"{SIGNATURE_VERSION}.{signer}.{ts_ms}.{nonce_hex}.{text}",
    }


@dataclass(frozen=True, slots=True)
class RouteCheck:
    """The outcome of :meth:`RouteVerifier.check`: ``signer`` when accepted, else ``reason``."""

    signer: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.signer is not None


@dataclass(frozen=True, slots=True)
class _Parsed:
    signer: str
    ts_ms: int
    nonce: str
    signature: bytes


def _parse(value: str | None) -> _Parsed | None:
    if value is None or len(value) > MAX_HEADER or not value.isascii():
        return None
    parts = value.strip().split(".")
    if len(parts) != 5 or parts[0] != str(SIGNATURE_VERSION):
        return None
    _, signer, ts_text, nonce, sig_text = parts
    if not (signer and len(signer) <= 64 and ts_text.isdigit() and len(ts_text) <= 16):
        return None
    if len(nonce) != 2 * NONCE_BYTES or any(c not in "0123456789abcdef" for c in nonce):
        return None
    try:
        sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
    except (binascii.Error, ValueError):
        return None
    return _Parsed(signer, int(ts_text), nonce, sig)


def _hops(value: str | None) -> int | None:
    text = (value or "0").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None


class RouteVerifier:
    """Checks signed routes arriving at node ``me``; remembers nonces to refuse replays.

    ``public_key_of(node_id)`` returns the public key of a current member
    (alive or suspect) or None. Not thread-safe: one per event loop.
    """

    def __init__(
        self,
        me: str,
        public_key_of: Callable[[str], bytes | None],
        window: float = WINDOW,
        cache_size: int = REPLAY_CACHE,
    ) -> None:
        if window <= 0 or cache_size < 1:
            raise ValueError("window and cache_size must be positive")
        self.me = me
        self._key_of = public_key_of
        self._window_ms = int(window * 1000)
        self._size = cache_size
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._floor_ms = -1
        """Timestamps at or below this may be replays of evicted entries: refused."""

    def check(self, method: str, path: str, headers: Mapping[str, str], now: float) -> RouteCheck:
        """Is this request, carrying ``X-Rmap2p-Route``, a fresh one signed by a current member for us?"""
        raw = headers.get(SIGNATURE_HEADER)
        if raw is None:
            return RouteCheck(None, "unsigned")
        parsed = _parse(raw)
        hops = _hops(headers.get(HOPS_HEADER))
        if parsed is None or hops is None:
            return RouteCheck(None, "malformed")
        target = headers.get(ROUTE_HEADER, "")
        if target != self.me:
            return RouteCheck(None, "wrong-target")
        key = self._key_of(parsed.signer)
        if key is None:
            return RouteCheck(None, "not-a-member")
        now_ms = int(now * 1000)
        self._expire(now_ms)
        if abs(now_ms - parsed.ts_ms) > self._window_ms:
            return RouteCheck(None, "stale")
        payload = signed_payload(method, path, target, hops, parsed.ts_ms, parsed.nonce, parsed.signer)
        if not verify(parsed.signer, key, payload, parsed.signature):
            return RouteCheck(None, "bad-signature")
        seen_key = (parsed.signer, parsed.nonce)
        if parsed.ts_ms <= self._floor_ms or seen_key in self._seen:
            return RouteCheck(None, "replayed")
        self._remember(seen_key, parsed.ts_ms)
        return RouteCheck(parsed.signer)

    def __len__(self) -> int:
        return len(self._seen)

    def _remember(self, key: tuple[str, str], ts_ms: int) -> None:
        self._seen[key] = ts_ms
        while len(self._seen) > self._size:
            _, evicted = self._seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, evicted)

    def _expire(self, now_ms: int) -> None:
        # Entries are in arrival order, close to timestamp order; an out-of-order one
        # lingers a little longer, which only costs memory already bounded by _size.
        horizon = now_ms - self._window_ms
        while self._seen:
            key, ts = next(iter(self._seen.items()))
            if ts >= horizon:
                break
            del self._seen[key]
