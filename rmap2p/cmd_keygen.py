"""``rmap2p keygen`` (make a cluster key) and ``rmap2p keys`` (rotate a running node's keyring).

``keygen`` without ``--key-file`` prints a new base64 key on stdout. With
``--key-file`` it adds the key to that keyring file (creating it; the first
key is primary), ``--primary`` making it the primary; the key is still
printed on stdout, so it can be handed to ``rmap2p keys install`` on the
other nodes, and the human-readable note goes to stderr.

``keys list|install|use|remove [KEY] --http HOST:PORT [--data-dir D] [--json]``
talks to a running node's admin API, an operator action (sent with the
node's operator token when the node is on this host, see
rmap2p/cmd_admin.py): ``GET /api/admin/keys`` returns
``{"keys": [{"fingerprint", "primary"}, ...], "primary": fingerprint}`` (key
material never leaves a node); ``POST`` with ``{"action": ..., "key": b64}``
(or, for use and remove, ``{"fingerprint": hex}``) returns the same
document, or ``{"error": msg}`` with status 400. Rotation without downtime
is: install the new key on every node, then use it on every node, then
remove the old one.

Exit codes: 0 success, 1 the node or file refused or could not be reached,
2 a usage error (missing or malformed KEY). The HTTP client is urllib:
one request per command needs no event loop.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from p2p.keyring import (
    Keyring,
    KeyringError,
    decode_key,
    encode_key,
    fingerprint,
    generate_key,
    load_keyring,
    save_keyring,
)
from rmap2p.cmd_admin import operator_headers

KEYS_PATH = "/api/admin/keys"
HTTP_TIMEOUT = 10.0
# The admin document is a few keys; cap what we read from a misbehaving server.
_MAX_RESPONSE = 1 << 20


def _err(message: str) -> None:
    print(f"rmap2p: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """``rmap2p keygen [--key-file FILE] [--primary]``."""
    key = generate_key()
    text = encode_key(key)
    key_file: str | None = getattr(args, "key_file", None)
    if not key_file:
        if getattr(args, "primary", False):
            _err("--primary only makes sense with --key-file; printing a key anyway")
        print(text)
        return 0
    path = Path(key_file).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            keyring = load_keyring(path)
            keyring.install(key)
            if args.primary:
                keyring.use(key)
            created = False
        else:
            keyring = Keyring.single(key)
            created = True
        save_keyring(path, keyring)
    except (KeyringError, OSError) as exc:
        _err(str(exc))
        return 1
    print(text)
    role = "primary" if keyring.primary == key else "installed, not primary"
    verb = "created" if created else "updated"
    print(
        f"{verb} {path}: new key {fingerprint(key)} ({role}); {len(keyring)} key(s) in the file",
        file=sys.stderr,
    )
    return 0


def keys(args: argparse.Namespace) -> int:
    """``rmap2p keys list|install|use|remove [KEY] --http HOST:PORT [--json]``."""
    action: str = args.action
    base = _base_url(args.http)
    if action == "list":
        status, doc = _call("GET", base + KEYS_PATH, None, operator_headers(args))
    else:
        if not args.key:
            _err(f"`keys {action}` needs a KEY (base64, as printed by `rmap2p keygen`)")
            return 2
        body: dict[str, str] = {"action": action}
        text = args.key.strip()
        if action != "install" and _FINGERPRINT.match(text):
            body["fingerprint"] = text.lower()
        else:
            try:
                decode_key(text)
            except KeyringError as exc:
                what = "a base64 key" if action == "install" else "a base64 key or a fingerprint (hex)"
                _err(f"bad KEY (expected {what}): {exc}")
                return 2
            body["key"] = text
        status, doc = _call("POST", base + KEYS_PATH, body, operator_headers(args))
    if status is None:
        _err(f"cannot reach the node at {args.http}: {doc}")
        return 1
    if status != 200 or not isinstance(doc, dict) or "error" in doc:
        message = doc.get("error") if isinstance(doc, dict) else None
        _err(f"node refused `keys {action}` (HTTP {status}): {message or doc!r}")
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    keys_list = doc.get("keys")
    primary = doc.get("primary")
    if not isinstance(keys_list, list):
        _err(f"unexpected answer from the node: {doc!r}")
        return 1
    if action != "list":
        done = {"install": "installed", "use": "now using", "remove": "removed"}[action]
        print(f"{done} key {_label(args.key.strip())}")
    print(f"{len(keys_list)} key(s) on the node at {args.http} (fingerprints):")
    for entry in keys_list:
        fp = entry.get("fingerprint") if isinstance(entry, dict) else str(entry)
        mark = "  (primary)" if fp == primary else ""
        print(f"  {fp}{mark}")
    return 0


def _label(text: str) -> str:
    try:
        return fingerprint(decode_key(text))
    except KeyringError:
        return text


_FINGERPRINT = re.compile(r"^[0-9a-fA-F]{4,16}$")


def _base_url(http: str) -> str:
    http = http.strip()
    if http.startswith(("http://", "https://")):
        return http.rstrip("/")
    return "http://" + http


def _call(
    method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str] | None = None
) -> tuple[int | None, Any]:
    """(status, parsed JSON) or (None, reason) when the node cannot be reached."""
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, _parse(resp.read(_MAX_RESPONSE))
    except urllib.error.HTTPError as exc:
        # A 4xx/5xx still carries the node's {"error": ...} document.
        with exc:
            return exc.code, _parse(exc.read(_MAX_RESPONSE))
    except urllib.error.URLError as exc:
        reason = exc.reason
        return None, getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as exc:
        return None, str(exc)


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"error": raw[:200].decode("utf-8", "replace") or "empty response"}
