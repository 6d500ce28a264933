"""How the protocol core signs and checks alive messages, without knowing the crypto.

The daemon passes an Ed25519 identity (``p2p.identity``); the simulator
passes ``UnsignedIdentity``, whose zero-filled key and signature have the
real sizes, so that message sizes (and bandwidth figures) stay true while
tens of thousands of simulated nodes skip the public-key arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class Signer(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, payload: bytes) -> bytes: ...


Verify = Callable[[str, bytes, bytes, bytes], bool]
"""``verify(node_id, public_key, payload, signature) -> bool``; never raises."""


@dataclass(frozen=True, slots=True)
class UnsignedIdentity:
    node_id: str
    public_key: bytes = bytes(PUBLIC_KEY_BYTES)

    def sign(self, payload: bytes) -> bytes:
        return bytes(SIGNATURE_BYTES)


def accept_unsigned(node_id: str, public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """The simulator's verifier: every well-formed claim is taken at its word."""
    return True
