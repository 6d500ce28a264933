"""Client bearer tokens that every node of a keyed pool can check without a server.

Mechanism. A token is an HMAC-SHA256 over a small claim, keyed by a key
derived (HKDF-SHA256, :data:`HKDF_INFO`) from a cluster key of the keyring.
Every node holds the keyring, so every node can recompute the MAC; no token
list exists anywhere. The claim, 33 bytes, big-endian::

    +---------+----------------+-----------------+--------------------+
    | version | issued (u64 s) | expires (u64 s) | token id (16 B)    |
    +---------+----------------+-----------------+--------------------+

``expires`` 0 means "never". The token text is
``rmap2p1.<base64url(claim || mac)>`` (no padding): 33 + 32 bytes, 95
characters in all.

Verification tries every key in the keyring, primary first, because a token
made before a rotation must keep working while the old key is installed;
removing that key (install → use → remove, p2p/keyring.py) is what revokes
every token made with it. The MAC is compared in constant time. A token's
id is random and not secret: nodes key per-client rate limits by it and may
log it.

Pure: no clock and no global random; the caller passes ``now`` and the id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TOKEN_VERSION = 1
PREFIX = "rmap2p1."
HKDF_INFO = b"rmap2p client bearer token v1"
ID_BYTES = 16
MAC_BYTES = 32
_CLAIM = struct.Struct(">BQQ16s")
CLAIM_BYTES = _CLAIM.size
TOKEN_BYTES = CLAIM_BYTES + MAC_BYTES
MAX_TOKEN_TEXT = 256
"""Longer header values are refused before any decoding (a real token is 95 characters)."""
CLOCK_SKEW = 300
"""Seconds a token's ``issued`` may lie in the future: hosts' clocks differ a little."""


class TokenError(ValueError):
    """The token is malformed, forged, made with a key no longer installed, or expired."""


@dataclass(frozen=True, slots=True)
class Token:
    """A verified (or freshly made) token's claim."""

    token_id: str
    """32 hex characters, random: not a secret, used to key rate limits and in logs."""
    issued: int
    expires: int | None
    """Unix seconds; None when the token never expires."""


def derive_token_key(cluster_key: bytes) -> bytes:
    """The 32-byte HMAC key for tokens: HKDF-SHA256(cluster key, no salt, info=HKDF_INFO).

    A separate key, so a token MAC can never be confused with a sealed gossip
    packet (both come from the same cluster key).
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(bytes(cluster_key))


def create_token(cluster_key: bytes, issued: int, expires: int | None, token_id: bytes) -> str:
    """A token valid from ``issued`` until ``expires`` (Unix seconds; None: never)."""
    if len(token_id) != ID_BYTES:
        raise ValueError(f"token id must be {ID_BYTES} bytes, got {len(token_id)}")
    if issued < 0 or (expires is not None and expires <= issued):
        raise ValueError("expires must come after issued")
    claim = _CLAIM.pack(TOKEN_VERSION, issued, expires or 0, bytes(token_id))
    mac = hmac.new(derive_token_key(cluster_key), claim, hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(claim + mac).rstrip(b"=").decode("ascii")


def verify_token(text: str, token_keys: Iterable[bytes], now: float) -> Token:
    """The claim of ``text`` if a key of ``token_keys`` (outputs of :func:`derive_token_key`)
    made it and it is valid at ``now``; else :class:`TokenError` saying why.

    Total on any input: ``text`` comes straight from a request header.
    """
    if not isinstance(text, str) or len(text) > MAX_TOKEN_TEXT:
        raise TokenError("not an rmap2p token")
    if not text.startswith(PREFIX):
        raise TokenError(f"not an rmap2p token (expected {PREFIX}…)")
    body = text[len(PREFIX) :]
    if not body.isascii() or not body.replace("-", "").replace("_", "").isalnum():
        raise TokenError("token is not valid base64url")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token is not valid base64url") from None
    if len(raw) != TOKEN_BYTES:
        raise TokenError(f"token has {len(raw)} bytes, expected {TOKEN_BYTES}")
    claim, mac = raw[:CLAIM_BYTES], raw[CLAIM_BYTES:]
    version, issued, expires, token_id = _CLAIM.unpack(claim)
    if version != TOKEN_VERSION:
        raise TokenError(f"unknown token version {version}")
    if not any(hmac.compare_digest(hmac.new(k, claim, hashlib.sha256).digest(), mac) for k in token_keys):
        raise TokenError("token not made with a key this pool holds (forged, or its key was rotated out)")
    if issued > now + CLOCK_SKEW:
        raise TokenError("token issued in the future (check the clocks)")
    if expires and now >= expires:
        raise TokenError("token expired")
    return Token(token_id.hex(), issued, expires or None)
