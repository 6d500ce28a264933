"""``rmap2p tokens create [--expires DURATION] [--key-file F] [--json]``: a client token, made offline.

The token (p2p/tokens.py) is an HMAC by a key derived from the keyring's
primary key; every node holding the keyring verifies it without asking
anyone. It goes to stdout alone (scripts capture it); its id and expiry go
to stderr. Exit codes: 0 done, 1 no usable keyring, 2 a bad duration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from p2p.keyring import KeyringError, fingerprint, load_keyring
from p2p.tokens import ID_BYTES, create_token, derive_token_key, verify_token

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
MAX_SECONDS = 10 * 365 * 86400


def parse_duration(text: str) -> int | None:
    """Seconds in ``text`` (``90``, ``15m``, ``12h``, ``30d``, ``2w``); None for ``never``; ValueError otherwise."""
    if text.strip().lower() in ("never", "none", "0"):
        return None
    m = _DURATION.match(text.lower())
    if m is None:
        raise ValueError(f"duration must be a number with s, m, h, d or w (e.g. 12h), or 'never'; got {text!r}")
    seconds = int(float(m.group(1)) * _UNITS[m.group(2) or "s"])
    if not 1 <= seconds <= MAX_SECONDS:
        raise ValueError(f"duration must be between 1 s and 10 years; got {text!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    try:
        lifetime = parse_duration(args.expires)
    except ValueError as exc:
        print(f"rmap2p tokens: {exc}", file=sys.stderr)
        return 2
    if not args.key_file:
        print(
            "rmap2p tokens: a token is made from the pool's keyring: give --key-file (or RMAP2P_KEY_FILE). "
            "A pool without a keyring needs no tokens: its HTTP API is open.",
            file=sys.stderr,
        )
        return 1
    path = Path(args.key_file).expanduser()
    try:
        ring = load_keyring(path)
    except KeyringError as exc:
        print(f"rmap2p tokens: {exc}", file=sys.stderr)
        return 1
    issued = int(time.time())
    expires = issued + lifetime if lifetime is not None else None
    token = create_token(ring.primary, issued, expires, os.urandom(ID_BYTES))
    claim = verify_token(token, [derive_token_key(ring.primary)], issued)
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)) if expires else "never"
    if args.json:
        print(json.dumps({"token": token, "token_id": claim.token_id, "issued": issued, "expires": expires,
                          "key": fingerprint(ring.primary)}))
    else:
        print(token)
        print(
            f"token {claim.token_id[:12]} made with key {fingerprint(ring.primary)} of {path}; expires {until}. "
            "Send it as 'Authorization: Bearer <token>'.",
            file=sys.stderr,
        )
    return 0
