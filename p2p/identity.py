"""Node identity and the small amount of state a node keeps in its data dir.

Mechanism. A node is an Ed25519 key pair. The private key lives in
``<data_dir>/identity.key`` (PKCS#8 PEM, mode 0600) and is created on first
start; the node id is ``blake2b(public_key_raw, digest_size=8).hexdigest()``
(16 hex characters). Because the id is a hash of the key, anyone holding a
``(node_id, public_key, payload, signature)`` tuple can check with
:func:`verify` that the payload really comes from that node: nobody can
announce services or load in another node's name (DESIGN "Wire and
security"). A restart reuses the key, so the node rejoins with the same id.

Next to the key the data dir holds:

- ``incarnation``: the last SWIM incarnation this node used. A restarted
  node starts above it (:func:`next_incarnation`), so its fresh alive
  message overrides the ``dead`` others remember without waiting for a
  refutation round.
- ``lock``: an advisory ``flock`` held for the daemon's lifetime
  (:func:`lock_data_dir`), so two daemons on one machine never share an
  identity. The kernel drops the lock when the process dies, so a SIGKILL
  never leaves a stale lock behind.

Every file is written atomically (temporary file, fsync, rename), so a crash
mid-write leaves either the old content or the new, never a torn file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"
INCARNATION_FILE = "incarnation"
LOCK_FILE = "lock"
NODE_ID_BYTES = 8
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# A PEM Ed25519 key is ~120 bytes; refuse to slurp anything absurd from disk.
_MAX_KEY_FILE = 4096
_MAX_INCARNATION_FILE = 256

PathLike = str | os.PathLike[str]


class IdentityError(Exception):
    """The identity key file exists but cannot be used (corrupt, wrong type, unreadable)."""


class DataDirLocked(RuntimeError):
    """Another process (normally another rmap2p daemon) holds the data dir's lock."""


def atomic_write(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically, the file created with ``mode``.

    Writes a temporary file in the same directory (so the rename cannot cross
    file systems), fsyncs it, renames it over ``path`` and fsyncs the
    directory. The temporary file is created with ``mode`` from the start, so
    a secret is never briefly world-readable.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def node_id_from_public_key(public_key: bytes) -> str:
    """The node id of a raw 32-byte Ed25519 public key: 16 hex characters."""
    return hashlib.blake2b(bytes(public_key), digest_size=NODE_ID_BYTES).hexdigest()


def verify(node_id: str, public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """True when ``node_id`` derives from ``public_key`` and ``signature`` signs ``payload``.

    Total: any malformed input (wrong types, wrong lengths, a public key that
    is not a curve point) yields False, never an exception, because every
    argument normally comes straight off the wire.
    """
    if not isinstance(node_id, str):
        return False
    if not all(isinstance(x, (bytes, bytearray, memoryview)) for x in (public_key, payload, signature)):
        return False
    pk = bytes(public_key)
    sig = bytes(signature)
    if len(pk) != PUBLIC_KEY_BYTES or len(sig) != SIGNATURE_BYTES:
        return False
    if node_id_from_public_key(pk) != node_id:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, bytes(payload))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class NodeIdentity:
    """This node's key pair and the node id derived from it."""

    private_key: Ed25519PrivateKey = field(repr=False, compare=False)
    public_key: bytes
    node_id: str

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> NodeIdentity:
        """Wrap an existing key (tests and simulations build identities this way)."""
        pk = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key=private_key, public_key=pk, node_id=node_id_from_public_key(pk))

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random identity, not persisted."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: PathLike) -> NodeIdentity:
        """Load ``<data_dir>/identity.key``, creating the directory and key if missing.

        An existing but unusable key file raises :class:`IdentityError` rather
        than being replaced: silently minting a new key would give the node a
        new id and orphan everything the pool knows about the old one.
        """
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / IDENTITY_FILE
        if path.exists():
            return cls._load(path)
        identity = cls.generate()
        pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _create_exclusive(path, pem):
            log.info("created node identity %s in %s", identity.node_id, path)
            return identity
        # Another process created the key between our check and our link: use theirs.
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> NodeIdentity:
        try:
            with path.open("rb") as fh:
                data = fh.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise IdentityError(f"cannot read identity key {path}: {exc.strerror or exc}") from exc
        if len(data) > _MAX_KEY_FILE:
            raise IdentityError(f"identity key {path} is too large to be an Ed25519 key")
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("identity key %s is readable by others (mode %o); chmod 600 it", path, mode)
        if len(data) == 32:
            # Raw 32-byte private seed, for keys provisioned by other tools.
            return cls.from_private_key(Ed25519PrivateKey.from_private_bytes(data))
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(
                f"identity key {path} is neither a PEM private key nor 32 raw bytes: {exc}"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"identity key {path} is a {type(key).__name__}, not Ed25519")
        return cls.from_private_key(key)

    def sign(self, payload: bytes) -> bytes:
        """Sign ``payload``; the signature is 64 bytes."""
        return self.private_key.sign(bytes(payload))


def load_incarnation(data_dir: PathLike) -> int:
    """The incarnation saved in ``<data_dir>/incarnation``; 0 when absent.

    An unreadable or corrupt file is logged and read as 0 instead of stopping
    the daemon: SWIM's refutation already repairs a too-low incarnation (a
    node that hears itself dead bumps above it), so availability wins here.
    """
    path = Path(data_dir) / INCARNATION_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_INCARNATION_FILE + 1)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("cannot read %s (%s); starting from incarnation 0", path, exc)
        return 0
    try:
        value = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        log.warning("ignoring corrupt incarnation file %s; starting from incarnation 0", path)
        return 0
    if value < 0:
        log.warning("ignoring negative incarnation in %s; starting from incarnation 0", path)
        return 0
    return value


def save_incarnation(data_dir: PathLike, incarnation: int) -> None:
    """Persist ``incarnation`` atomically in ``<data_dir>/incarnation``."""
    if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
        raise ValueError(f"incarnation must be a non-negative int, got {incarnation!r}")
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(directory / INCARNATION_FILE, f"{incarnation}\n".encode("ascii"), mode=0o600)


def next_incarnation(data_dir: PathLike) -> int:
    """Load the saved incarnation, persist one more and return it (call once per start)."""
    value = load_incarnation(data_dir) + 1
    save_incarnation(data_dir, value)
    return value


class DataDirLock:
    """A held ``flock`` on ``<data_dir>/lock``; release it with :meth:`release` or ``with``."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The lock file stays; its presence means nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_data_dir(data_dir: PathLike) -> DataDirLock:
    """Take the data dir's advisory lock, or raise :class:`DataDirLocked` at once.

    Non-blocking: a second daemon pointed at the same data dir fails
    immediately with a message naming the holder's pid, instead of hanging.
    The lock is tied to the open file, so it is also exclusive between two
    calls in one process.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            who = f" (pid {holder})" if holder else ""
            raise DataDirLocked(
                f"data dir {directory} is already in use by another rmap2p daemon{who}; "
                f"give this node its own --data-dir"
            ) from exc
        raise
    # Record who holds it, for the message above; the lock, not the pid, is authoritative.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return DataDirLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``data`` to a new file at ``path`` (mode 0600) unless ``path`` exists.

    Written to a temporary name first and then hard-linked into place, so the
    file appears complete or not at all and an existing file is never
    replaced. Returns False when ``path`` already existed.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        except OSError as exc:
            # File systems without hard links (some FUSE/SMB mounts): fall back
            # to O_EXCL creation, which is still no-clobber, just not atomic.
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some file systems refuse O_RDONLY on dirs.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

