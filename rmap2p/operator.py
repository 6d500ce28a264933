"""The node's operator token: ``<data dir>/operator.token``, mode 0600.

Whoever can read this file may do on the node what only its operator may
(leave, key rotation) from any address; from loopback no token is needed.
The daemon creates it at start if it is missing or unusable and keeps it
across restarts (delete it and restart to rotate it); the CLI on the same
host reads it, so ``rmap2p leave`` and ``rmap2p keys …`` need no flag.
It travels in the ``X-Rmap2p-Operator`` header, never in a client's
``Authorization``: the two kinds of token cannot be mixed up.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from p2p.identity import atomic_write
from services.routing import OPERATOR_HEADER

log = logging.getLogger(__name__)

TOKEN_FILE = "operator.token"
HEADER = OPERATOR_HEADER
TOKEN_BYTES = 32
_MAX_FILE = 256


def token_path(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / TOKEN_FILE


def read_token(data_dir: Path) -> str | None:
    """The token in ``data_dir``, or None when absent, unreadable or not a token."""
    try:
        with token_path(data_dir).open("rb") as fh:
            raw = fh.read(_MAX_FILE + 1)
    except OSError:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if 32 <= len(text) <= _MAX_FILE and text.isascii() and text.isprintable() else None


def ensure_token(data_dir: Path) -> str:
    """The node's token, created (random, mode 0600) when missing or unusable."""
    path = token_path(data_dir)
    existing = read_token(data_dir)
    if existing is not None:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("operator token %s was readable by others (mode %o); set to 0600", path, mode)
        return existing
    token = secrets.token_urlsafe(TOKEN_BYTES)
    atomic_write(path, (token + "\n").encode("ascii"), mode=0o600)
    log.info("created operator token %s", path)
    return token


def matches(presented: str | None, token: str) -> bool:
    """Constant-time comparison of a presented header value with the node's token."""
    if presented is None or not presented.isascii():
        return False
    return hmac.compare_digest(presented.strip().encode("ascii"), token.encode("ascii"))
