from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from p2p.keyring import Keyring, KeyringError, decode_key, encode_key, load_keyring
from rmap2p.cmd_admin import is_this_host
from rmap2p.http_api import key_fingerprint
from rmap2p.operator import ensure_token

REPO = Path(__file__).resolve().parent.parent


def rmap2p(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rmap2p", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keygen_prints_a_key() -> None:
    result = rmap2p("keygen")
    assert result.returncode == 0, result.stderr
    key = decode_key(result.stdout.strip())
    assert len(key) == 32
    assert rmap2p("keygen").stdout != result.stdout


def test_keygen_key_file_create_add_and_primary(tmp_path) -> None:
    path = tmp_path / "keys" / "keyring.json"
    path.parent.mkdir()
    first = rmap2p("keygen", "--key-file", str(path))
    assert first.returncode == 0, first.stderr
    k1 = decode_key(first.stdout.strip())
    assert "created" in first.stderr and "primary" in first.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    ring = load_keyring(path)
    assert ring.list() == [k1] and ring.primary == k1

    second = rmap2p("keygen", "--key-file", str(path))
    assert second.returncode == 0, second.stderr
    k2 = decode_key(second.stdout.strip())
    assert "not primary" in second.stderr
    ring = load_keyring(path)
    assert ring.list() == [k1, k2] and ring.primary == k1

    third = rmap2p("keygen", "--key-file", str(path), "--primary")
    assert third.returncode == 0, third.stderr
    k3 = decode_key(third.stdout.strip())
    ring = load_keyring(path)
    assert ring.primary == k3 and set(ring.list()) == {k1, k2, k3}


def test_keygen_refuses_a_corrupt_key_file(tmp_path) -> None:
    path = tmp_path / "keyring.json"
    path.write_text("{broken")
    result = rmap2p("keygen", "--key-file", str(path))
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr
    assert path.read_text() == "{broken"


class _FakeNode:
    """A tiny stand-in for a node's /api/admin/keys endpoint, backed by a real Keyring.

    It answers with the node's document shape (rmap2p/http_api.py: fingerprints only) and
    records the headers of each request, so the tests see what the CLI sends.
    """

    def __init__(self, ring: Keyring) -> None:
        self.ring = ring
        self.headers: list[dict[str, str]] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, doc: object) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                node.headers.append({k.lower(): v for k, v in self.headers.items()})
                if self.path != "/api/admin/keys":
                    self._reply(404, {"error": "not found"})
                    return
                self._reply(200, _doc(node.ring))

            def do_POST(self) -> None:
                node.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    if "fingerprint" in body:
                        key = next(k for k in node.ring.list() if key_fingerprint(k).startswith(body["fingerprint"]))
                    else:
                        key = decode_key(body["key"])
                    getattr(node.ring, body["action"])(key)
                except KeyringError as exc:
                    self._reply(400, {"error": str(exc)})
                    return
                self._reply(200, _doc(node.ring))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _FakeNode:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _doc(ring: Keyring) -> dict[str, object]:
    primary = key_fingerprint(ring.primary)
    return {"keys": [{"fingerprint": key_fingerprint(k), "primary": key_fingerprint(k) == primary} for k in ring.list()],
            "primary": primary, "encrypted": True}


@pytest.fixture
def node() -> Iterator[_FakeNode]:
    with _FakeNode(Keyring.single(bytes(32))) as fake:
        yield fake


def test_keys_list(node: _FakeNode, tmp_path: Path) -> None:
    result = rmap2p("keys", "list", "--http", node.addr, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{key_fingerprint(bytes(32))}  (primary)" in result.stdout
    assert encode_key(bytes(32)) not in result.stdout
    as_json = rmap2p("keys", "list", "--http", node.addr, "--json")
    assert json.loads(as_json.stdout) == _doc(node.ring)


def test_keys_sends_the_operator_token_only_to_a_node_on_this_host(node: _FakeNode, tmp_path: Path) -> None:
    token = ensure_token(tmp_path)
    assert (tmp_path / "operator.token").stat().st_mode & 0o777 == 0o600
    assert rmap2p("keys", "list", "--http", node.addr, "--data-dir", str(tmp_path)).returncode == 0
    assert node.headers[-1].get("x-rmap2p-operator") == token
    assert rmap2p("keys", "list", "--http", node.addr, "--data-dir", str(tmp_path / "none")).returncode == 0
    assert "x-rmap2p-operator" not in node.headers[-1], "no token file: nothing sent"
    assert is_this_host(node.addr) and is_this_host("localhost:1") and is_this_host("[::1]:8080")
    assert not is_this_host("192.0.2.1:8080"), "TEST-NET address: not ours, the token must not go there"


def test_keys_rotation_through_the_cli(node: _FakeNode) -> None:
    old = encode_key(bytes(32))
    new = encode_key(bytes(range(32)))
    assert rmap2p("keys", "install", new, "--http", node.addr).returncode == 0
    assert node.ring.list() == [bytes(32), bytes(range(32))]
    used = rmap2p("keys", "use", new, "--http", node.addr)
    assert used.returncode == 0 and f"{key_fingerprint(bytes(range(32)))}  (primary)" in used.stdout
    assert rmap2p("keys", "remove", old, "--http", node.addr).returncode == 0
    assert node.ring.list() == [bytes(range(32))]
    # use and remove also take a fingerprint (what `keys list` shows).
    assert rmap2p("keys", "install", old, "--http", node.addr).returncode == 0
    assert rmap2p("keys", "use", key_fingerprint(bytes(32))[:8], "--http", node.addr).returncode == 0
    assert node.ring.primary == bytes(32)


def test_keys_node_refusal_is_reported(node: _FakeNode) -> None:
    result = rmap2p("keys", "remove", encode_key(bytes(32)), "--http", node.addr)
    assert result.returncode == 1
    assert "HTTP 400" in result.stderr and "primary" in result.stderr


def test_keys_usage_errors(node: _FakeNode) -> None:
    missing = rmap2p("keys", "install", "--http", node.addr)
    assert missing.returncode == 2 and "needs a KEY" in missing.stderr
    bad = rmap2p("keys", "use", "not-a-key", "--http", node.addr)
    assert bad.returncode == 2 and "bad KEY" in bad.stderr


def test_keys_connection_refused_is_one_line() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    result = rmap2p("keys", "list", "--http", f"127.0.0.1:{port}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the node" in lines[0] and "refused" in lines[0].lower()
    assert result.stdout == ""
