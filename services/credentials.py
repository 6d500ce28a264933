"""Passwords of the stateful services: one per service per pool, kept in the data dir (0600).

A storage service never runs with a default or empty password. Every copy
of a service in a pool needs the *same* password (a replica authenticates
to its primary with it, and applications use one password whatever node
they reach), so it is derived, not drawn at random on each node:

    password = base64url(HMAC-SHA256(pool_secret, "rmap2p storage password v1\\0" + service))

where ``pool_secret`` is a secret every member of the pool already holds
(the daemon passes its keyring's primary key, or an operator-provided
secret). The first derivation is written to
``<data dir>/services/<service>/password`` (mode 0600) and that file wins
from then on, so rotating the keyring does not change a running database's
password. Without any pool secret (an open pool), the password is drawn at
random on that node: it protects the node's own copy but replication across
nodes then needs the operator to copy the file (the probe says so).

An application reads the password from that file on any storage node
(``cat <data dir>/services/redis/password``); the README says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from p2p.identity import atomic_write

PASSWORD_FILE = "password"
_CONTEXT = b"rmap2p storage password v1\0"


def derive_password(pool_secret: bytes, service: str) -> str:
    """The pool-wide password of ``service`` (43 URL-safe characters, no padding). Pure."""
    if not pool_secret:
        raise ValueError("empty pool secret")
    digest = hmac.new(pool_secret, _CONTEXT + service.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def service_password(service_dir: Path, service: str, pool_secret: bytes | None) -> str:
    """The password kept in ``service_dir/password``, created (0600) on first use."""
    path = service_dir / PASSWORD_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return text
    service_dir.mkdir(parents=True, exist_ok=True)
    password = derive_password(pool_secret, service) if pool_secret else secrets.token_urlsafe(32)
    atomic_write(path, (password + "\n").encode(), mode=0o600)
    return password
