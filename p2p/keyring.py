"""Cluster keyring: AES-256-GCM sealing of every UDP datagram and TCP frame.

Mechanism. A :class:`Keyring` holds one or more 32-byte keys; the *primary*
one seals outgoing payloads and every installed key is tried, primary first,
to open incoming ones. That is what makes rotation possible without downtime
(memberlist's keyring does the same):

1. ``install(new)`` on every node: all nodes can now *read* the new key;
2. ``use(new)`` on every node: they now *write* with it, and can still read
   peers that have not switched yet;
3. ``remove(old)`` on every node once all have switched.

Sealed format (version 1)::

    +---------+------------------+-------------------------------+
    | 0x01    | nonce (12 bytes) | ciphertext || GCM tag (16 B)  |
    +---------+------------------+-------------------------------+

so a sealed payload is exactly :data:`SEAL_OVERHEAD` = 1 + 12 + 16 = **29
bytes** longer than the plaintext. The nonce is 96 random bits from
``os.urandom`` per message (NIST SP 800-38D's random construction; rotate
keys well before 2**32 messages per key). The version byte is prepended to
the caller's associated data, so it is authenticated too: a flipped version
byte fails like any other tampering. Replay protection is *not* provided
here; SWIM tolerates duplicates, and incarnation numbers order state.

:meth:`Keyring.open` is total: for any input it returns plaintext or raises
:class:`SealError` (a ``ValueError``), never anything else, because its input
comes straight off the network (STYLE item 6: the shell drops and counts).

:class:`NullSealer` is the no-encryption twin (identity, overhead 0), so the
daemon and the simulator take any :class:`Sealer` and never branch on
whether a keyring is configured.

The keyring file is JSON, ``{"keys": [base64, ...], "primary": base64}``,
written atomically with mode 0600 (:func:`save_keyring`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from p2p.identity import atomic_write

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_VERSION = 1
#: Bytes a sealed payload adds to its plaintext: version (1) + nonce (12) + tag (16).
SEAL_OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES
_VERSION_BYTE = bytes([SEAL_VERSION])
# A keyring file holds a handful of base64 keys; anything bigger is not one.
_MAX_KEYRING_FILE = 1 << 20

PathLike = str | os.PathLike[str]


class SealError(ValueError):
    """A sealed payload is malformed, of an unknown version, or fails authentication."""


class KeyringError(ValueError):
    """A key or keyring file is invalid, or a rotation step is not allowed."""


@runtime_checkable
class Sealer(Protocol):
    """What the transports and the daemon need from a keyring."""

    #: Bytes that :meth:`seal` adds to a payload (for size budgets and byte counts).
    overhead: int

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Protect ``plaintext`` for the wire."""
        ...

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """Recover the plaintext, or raise :class:`SealError`."""
        ...


class NullSealer:
    """No encryption: ``seal`` and ``open`` return the payload unchanged (overhead 0)."""

    overhead: int = 0

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise TypeError(f"plaintext must be bytes, got {type(plaintext).__name__}")
        return bytes(plaintext)

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        if not isinstance(sealed, (bytes, bytearray, memoryview)):
            raise SealError(f"expected bytes, got {type(sealed).__name__}")
        return bytes(sealed)


def generate_key() -> bytes:
    """A new random 32-byte (AES-256) key from the OS CSPRNG."""
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    """Standard base64 text of a key (the form used in files, the CLI and HTTP)."""
    return base64.b64encode(_check_key(key)).decode("ascii")


def decode_key(text: str) -> bytes:
    """Decode base64 ``text`` into a 32-byte key, or raise :class:`KeyringError`."""
    if not isinstance(text, str):
        raise KeyringError(f"a key must be base64 text, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyringError(f"key is not valid base64: {exc}") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"key must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise KeyringError(f"a key must be bytes, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"a key must be {KEY_BYTES} bytes (AES-256), got {len(raw)}")
    return raw


class Keyring:
    """Installed AES-256-GCM keys, one of them primary. Implements :class:`Sealer`.

    Not thread-safe; the daemon uses it from its event loop only.
    """

    overhead: int = SEAL_OVERHEAD

    def __init__(self, keys: list[bytes], primary: bytes) -> None:
        """``keys`` may omit ``primary``; it is installed either way."""
        primary = _check_key(primary)
        self._ciphers: dict[bytes, AESGCM] = {}
        # Primary first, then the others in the order given: the order open() tries them.
        self._order: list[bytes] = []
        for key in [primary, *keys]:
            self.install(key)
        self._primary = primary

    @classmethod
    def single(cls, key: bytes) -> Keyring:
        """A keyring holding one key, which is primary."""
        return cls([key], key)

    @property
    def primary(self) -> bytes:
        return self._primary

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt with the primary key: version byte, 12-byte nonce, ciphertext+tag."""
        # bytes(5) would silently seal five zero bytes: insist on real bytes.
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise TypeError(f"plaintext must be bytes, got {type(plaintext).__name__}")
        if not isinstance(aad, (bytes, bytearray, memoryview)):
            raise TypeError(f"associated data must be bytes, got {type(aad).__name__}")
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._ciphers[self._primary].encrypt(
            nonce, bytes(plaintext), _VERSION_BYTE + bytes(aad)
        )
        return _VERSION_BYTE + nonce + ciphertext

    def open(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """Decrypt with the first installed key that authenticates, or raise :class:`SealError`."""
        if not isinstance(sealed, (bytes, bytearray, memoryview)):
            raise SealError(f"expected bytes, got {type(sealed).__name__}")
        if not isinstance(aad, (bytes, bytearray, memoryview)):
            raise SealError(f"associated data must be bytes, got {type(aad).__name__}")
        data = bytes(sealed)
        if len(data) < SEAL_OVERHEAD:
            raise SealError(f"sealed payload too short ({len(data)} < {SEAL_OVERHEAD} bytes)")
        if data[0] != SEAL_VERSION:
            raise SealError(f"unknown seal version {data[0]}")
        nonce = data[1 : 1 + NONCE_BYTES]
        body = data[1 + NONCE_BYTES :]
        full_aad = _VERSION_BYTE + bytes(aad)
        for key in self._order:
            try:
                return self._ciphers[key].decrypt(nonce, body, full_aad)
            except InvalidTag:
                continue
            except OverflowError:
                # Over 2**31 bytes: cryptography refuses before checking the tag.
                raise SealError("sealed payload too large") from None
        raise SealError("no installed key authenticates this payload")

    def install(self, key: bytes) -> None:
        """Accept ``key`` for opening (idempotent). It seals nothing until :meth:`use`."""
        raw = _check_key(key)
        if raw in self._ciphers:
            return
        self._ciphers[raw] = AESGCM(raw)
        self._order.append(raw)

    def use(self, key: bytes) -> None:
        """Make an installed ``key`` the primary (sealing) key."""
        raw = _check_key(key)
        if raw not in self._ciphers:
            raise KeyringError("cannot use a key that is not installed; install it first")
        self._primary = raw
        # Tried first on open: after a switch, most traffic is sealed with it.
        self._order.remove(raw)
        self._order.insert(0, raw)

    def remove(self, key: bytes) -> None:
        """Uninstall ``key``; messages sealed with it no longer open. The primary cannot be removed."""
        raw = _check_key(key)
        if raw not in self._ciphers:
            raise KeyringError("cannot remove a key that is not installed")
        if raw == self._primary:
            raise KeyringError("cannot remove the primary key; use another key first")
        del self._ciphers[raw]
        self._order.remove(raw)

    def to_document(self) -> dict[str, object]:
        """``{"keys": [base64, ...], "primary": base64}``: the file and HTTP form."""
        return {"keys": [encode_key(k) for k in self._order], "primary": encode_key(self._primary)}

    @classmethod
    def from_document(cls, doc: object) -> Keyring:
        """Inverse of :meth:`to_document`; raises :class:`KeyringError` on a bad document."""
        if not isinstance(doc, dict):
            raise KeyringError("keyring must be a JSON object with 'keys' and 'primary'")
        primary_text = doc.get("primary")
        if primary_text is None:
            raise KeyringError("keyring has no 'primary' key")
        keys_text = doc.get("keys", [])
        if not isinstance(keys_text, list):
            raise KeyringError("'keys' must be a list of base64 keys")
        try:
            primary = decode_key(primary_text)
        except KeyringError as exc:
            raise KeyringError(f"'primary': {exc}") from None
        keys = []
        for i, text in enumerate(keys_text):
            try:
                keys.append(decode_key(text))
            except KeyringError as exc:
                raise KeyringError(f"'keys'[{i}]: {exc}") from None
        return cls(keys, primary)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (bytes, bytearray)) and bytes(key) in self._ciphers

    def __repr__(self) -> str:
        # Never print key material; a short fingerprint is enough to tell keys apart.
        return f"Keyring({len(self._order)} keys, primary={fingerprint(self._primary)})"

    def list(self) -> list[bytes]:
        """The installed keys, primary first."""
        return list(self._order)


def fingerprint(key: bytes) -> str:
    """A short, non-secret label for a key (first 8 hex chars of its SHA-256), for logs."""
    return hashlib.sha256(bytes(key)).hexdigest()[:8]


def load_keyring(path: PathLike) -> Keyring:
    """Read a keyring file; any problem raises :class:`KeyringError` naming the file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(_MAX_KEYRING_FILE + 1)
    except FileNotFoundError:
        raise KeyringError(
            f"keyring file {p} does not exist (create one with `rmap2p keygen --key-file {p}`)"
        ) from None
    except OSError as exc:
        raise KeyringError(f"cannot read keyring file {p}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_KEYRING_FILE:
        raise KeyringError(f"keyring file {p} is too large")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyringError(f"keyring file {p} is not valid JSON: {exc}") from None
    try:
        return Keyring.from_document(doc)
    except KeyringError as exc:
        raise KeyringError(f"keyring file {p}: {exc}") from None


def save_keyring(path: PathLike, keyring: Keyring) -> None:
    """Write ``keyring`` to ``path`` atomically, mode 0600 (it holds secrets)."""
    text = json.dumps(keyring.to_document(), indent=2) + "\n"
    atomic_write(path, text.encode("utf-8"), mode=0o600)
