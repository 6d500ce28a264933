"""The HTTP port's guards against real daemons on loopback (rmap2p/http_guard.py).

What needs a non-loopback client (operator refusals, client tokens) is in
tests/test_netns_http_security.py; here: the coordinator's read-only views,
route signatures (forged, replayed, and a genuine one made with a member's
own identity), operator actions behind gateway headers, rate limits, key
listings, malformed HTTP and JSON, and the CLI on the node's host.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import NodeProc, wait_for

from p2p.identity import NodeIdentity
from p2p.keyring import decode_key
from rmap2p.http_api import key_fingerprint
from services.route_auth import (
    HOPS_HEADER,
    ROUTE_HEADER,
    SIGNATURE_HEADER,
    sign_route_headers,
)

pytestmark = pytest.mark.slow

READ_ONLY = ["/health", "/api/admin/workers", "/api/admin/services", "/api/admin/gaps", "/api/admin/leaders", "/api/admin/stats"]


def rmap2p(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rmap2p", *args], capture_output=True, text=True, timeout=30, check=False)


def call(node: NodeProc, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw) if raw else None
    finally:
        conn.close()


def raw_exchange(node: NodeProc, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send bytes as they are (no client library tidies them) and parse the one response."""
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as s:
        s.sendall(data)  # no half-close: aiohttp drops a connection whose client sent EOF
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without a response: {buf!r}"
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            chunk = s.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An edge node (it runs the coordinator service) and a CPU node, in a pool with a keyring."""
    tmp = tmp_path_factory.mktemp("httpsec")
    ring = tmp / "ring.json"
    key = rmap2p("keygen", "--key-file", str(ring)).stdout.strip()
    nodes = [
        NodeProc("e0", tmp, extra=["--type", "edge", "--key-file", str(ring)], services=True),
        NodeProc("c0", tmp, extra=["--type", "cpu", "--key-file", str(ring)], services=True),
    ]
    try:
        nodes[0].start().wait_healthy()
        nodes[1].start(join=[nodes[0].gossip]).wait_healthy()
        wait_for(lambda: all(len([w for w in n.view().values() if w["status"] == "alive"]) == 2 for n in nodes), 20, "2 alive")
        wait_for(lambda: nodes[0].view()["e0"]["services_status"].get("coordinator") == "healthy"
                 and nodes[0].view()["c0"]["services_status"].get("ner-extraction") == "healthy", 40, "coordinator and ner")
        yield {"edge": nodes[0], "cpu": nodes[1], "key": key, "ring": ring, "tmp": tmp}
    except BaseException:
        for n in nodes:
            print(f"----- {n.name}\n{n.tail(60)}")
        raise
    finally:
        for n in nodes:
            n.terminate()


def test_operator_token_is_created_private(keyed: dict[str, Any]) -> None:
    path = keyed["edge"].data_dir / "operator.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) >= 32


def test_no_key_material_over_http(keyed: dict[str, Any]) -> None:
    edge: NodeProc = keyed["edge"]
    key = keyed["key"]
    status, _, doc = call(edge, "GET", "/api/admin/keys")
    assert status == 200
    fp = key_fingerprint(decode_key(key))
    assert doc == {"keys": [{"fingerprint": fp, "primary": True}], "primary": fp, "encrypted": True}
    for path in [*READ_ONLY, "/api/admin/keys", "/api/service/coordinator/api/admin/keys"]:
        _, _, doc = call(edge, "GET", path)
        assert key not in json.dumps(doc), path
    status, _, doc = call(edge, "POST", "/api/admin/keys", json.dumps({"action": "install", "key": key}).encode())
    assert status == 200 and key not in json.dumps(doc)


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("POST", "/api/admin/leave"), ("GET", "/api/admin/keys"), ("POST", "/api/admin/keys"),
        ("POST", "/api/admin/%6Ceave"), ("POST", "/api/admin/../admin/leave"), ("POST", "//api/admin/leave"),
        ("GET", "/api/admin/workers/../keys"), ("DELETE", "/api/admin/workers"), ("POST", "/api/worker/job"),
        ("POST", "/../coordinator/api/admin/leave"),
    ],
)
def test_the_coordinator_service_forwards_no_operator_action(keyed: dict[str, Any], method: str, suffix: str) -> None:
    for entry in (keyed["edge"], keyed["cpu"]):  # itself (a loopback self-forward) and through another gateway
        for name in ("coordinator", "COORDINATOR", "co%6Frdinator"):
            status, _, doc = call(entry, method, f"/api/service/{name}{suffix}", b"{}" if method == "POST" else None)
            assert status == 403 and "read-only" in doc["error"], (entry.name, name, suffix, doc)
    assert keyed["edge"].alive() and call(keyed["edge"], "GET", "/health")[0] == 200
    assert call(keyed["edge"], "GET", "/api/admin/stats")[2]["http"]["coordinator_refused"] > 0


def test_a_dot_segment_cannot_smuggle_a_request_to_the_coordinator(keyed: dict[str, Any]) -> None:
    # aiohttp routes the raw path: this is a request for ner (path "../coordinator/..."), which goes
    # to a ner runner, never to a node's HTTP port; in no case does anyone leave.
    for entry in (keyed["edge"], keyed["cpu"]):
        _, _, doc = call(entry, "POST", "/api/service/ner/../coordinator/api/admin/leave", b"")
        assert (doc or {}).get("status") != "leaving", doc
    time.sleep(0.5)
    assert all(call(n, "GET", "/health")[0] == 200 for n in (keyed["edge"], keyed["cpu"]))


def test_the_coordinator_service_serves_the_read_only_views(keyed: dict[str, Any]) -> None:
    edge: NodeProc = keyed["edge"]
    for path in READ_ONLY:
        status, headers, doc = call(edge, "GET", f"/api/service/coordinator{path}")
        assert status == 200, (path, doc)
        assert headers["x-rmap2p-node"] == edge.view()["e0"]["worker_id"]


def test_operator_endpoints_refuse_gateway_forwarding_headers_without_the_token(keyed: dict[str, Any]) -> None:
    cpu: NodeProc = keyed["cpu"]
    token = (cpu.data_dir / "operator.token").read_text().strip()
    for headers in ({HOPS_HEADER: "0"}, {HOPS_HEADER: "1"}, {HOPS_HEADER: "1", "X-Rmap2p-Operator": "wrong" * 10}):
        status, _, doc = call(cpu, "GET", "/api/admin/keys", headers=headers)
        assert status == 403 and "operator" in doc["error"], headers
    status, _, doc = call(cpu, "GET", "/api/admin/keys", headers={HOPS_HEADER: "1", "X-Rmap2p-Operator": token})
    assert status == 200 and doc["encrypted"] is True


def _identity(node: NodeProc) -> NodeIdentity:
    return NodeIdentity.load_or_create(node.data_dir)


def test_routed_requests_need_a_members_fresh_signature(keyed: dict[str, Any]) -> None:
    cpu: NodeProc = keyed["cpu"]
    me = cpu.view()["c0"]["worker_id"]
    edge_ident = _identity(keyed["edge"])
    before = call(cpu, "GET", "/api/admin/stats")[2]["http"]
    path = "/api/service/ner/extract?x=1"
    # Forged: no signature, a garbage one, a real one by a stranger, one for another target, an old one.
    stranger = NodeIdentity.generate()
    cases = [
        ({ROUTE_HEADER: me, HOPS_HEADER: "1"}, "unsigned"),
        ({ROUTE_HEADER: me, HOPS_HEADER: "1", SIGNATURE_HEADER: "1.x.1.00.AA"}, "malformed"),
        (sign_route_headers(stranger, "POST", path, me, 1, time.time()), "not-a-member"),
        (sign_route_headers(edge_ident, "POST", path, edge_ident.node_id, 1, time.time()), "wrong-target"),
        (sign_route_headers(edge_ident, "POST", path, me, 1, time.time() - 120), "stale"),
        (sign_route_headers(edge_ident, "POST", "/api/service/ner/other", me, 1, time.time()), "bad-signature"),
    ]
    for headers, reason in cases:
        status, _, doc = call(cpu, "POST", path, b"{}", headers)
        assert (status, doc["reason"]) == (403, reason), doc
    # Genuine: signed by a current member (the edge node's own identity, read from its data dir).
    good = sign_route_headers(edge_ident, "POST", path, me, 1, time.time())
    status, headers, doc = call(cpu, "POST", path, b'{"text": "x"}', good)
    assert status == 200 and headers["x-rmap2p-node"] == me, doc
    status, _, doc = call(cpu, "POST", path, b'{"text": "x"}', good)
    assert (status, doc["reason"]) == (403, "replayed")
    after = call(cpu, "GET", "/api/admin/stats")[2]["http"]
    assert after["route_refused_total"] - before["route_refused_total"] == len(cases) + 1
    assert after["routes_accepted"] == before["routes_accepted"] + 1
    assert after["route_refused"]["replayed"] >= 1


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header too long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431, "headers"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400, "malformed HTTP"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "malformed HTTP"),
        (b"POST /api/admin/keys HTTP/1.1\r\nHost: x\r\nContent-Length: 1100000\r\n\r\n" + b"x" * 1100000, 413, "size"),
    ],
)
def test_malformed_http_gets_a_json_4xx_and_one_log_line(keyed: dict[str, Any], data: bytes, status: int, says: str) -> None:
    edge: NodeProc = keyed["edge"]
    got, headers, doc = raw_exchange(edge, data)
    assert got == status and headers["content-type"].startswith("application/json"), (got, doc)
    assert says in doc["error"]
    assert call(edge, "GET", "/health")[0] == 200
    assert "Traceback" not in edge.log.read_text(errors="replace")


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/api/admin/keys", b"[" * 100_000, "nested too deeply"),
        ("/api/admin/keys", b"[" * 70 + b"]" * 70, "deeper than 64"),
        ("/api/coordinator/broadcast-job", json.dumps({"job_type": "x", "job_data": {"a": [[[[[[[[[[[[]]]]]]]]]]]]}}).encode()
         .replace(b"[]", b"[" * 60 + b"]" * 60), "deeper than 64"),
        ("/api/worker/job", b"\xff\xfe", "not JSON"),
        ("/api/admin/keys", b'{"action": 5, "key": []}', "expected"),
        ("/api/admin/keys", b'{"action": "use", "key": 5}', "base64"),
        ("/api/admin/keys", b'{"action": "use", "fingerprint": "zz"}', "fingerprint"),
        ("/api/admin/keys", b'{"action": "install", "fingerprint": "abcd"}', "install needs the key"),
        ("/api/admin/keys", b'{"action": "fly", "key": "x"}', "unknown action"),
        ("/api/admin/keys", b"[]", "expected"),
        ("/api/coordinator/broadcast-job", b'{"job_type": [], "job_data": {}}', "job_type"),
    ],
)
def test_bad_json_is_a_400_saying_what_is_wrong(keyed: dict[str, Any], path: str, body: bytes, says: str) -> None:
    status, _, doc = call(keyed["edge"], "POST", path, body, {"Content-Type": "application/json"})
    assert status == 400 and says in doc["error"], doc


def test_unknown_paths_and_methods_answer_json(keyed: dict[str, Any]) -> None:
    status, _, doc = call(keyed["edge"], "GET", "/no/such/thing")
    assert status == 404 and doc["error"]
    status, headers, doc = call(keyed["edge"], "DELETE", "/health")
    assert status == 405 and doc["error"] and "GET" in headers.get("allow", "")


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[dict[str, Any]]:
    ring = tmp_path / "ring.json"
    rmap2p("keygen", "--key-file", str(ring))
    node = NodeProc("r0", tmp_path, extra=["--key-file", str(ring)], env={"RMAP2P_RATE_LIMIT": "2/4"})
    try:
        node.start().wait_healthy()
        yield {"node": node, "ring": ring}
    except BaseException:
        print(node.tail(60))
        raise
    finally:
        node.terminate()


def test_rate_limit_per_token_with_retry_after_and_the_cli_on_the_nodes_host(limited: dict[str, Any]) -> None:
    node: NodeProc = limited["node"]
    made = rmap2p("tokens", "create", "--expires", "1h", "--key-file", str(limited["ring"]))
    assert made.returncode == 0 and "expires" in made.stderr, made.stderr
    token = made.stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    statuses = [call(node, "GET", "/health", headers=auth) for _ in range(8)]
    codes = [s for s, _, _ in statuses]
    assert codes[:4] == [200] * 4 and 429 in codes, codes
    limited_resp = next(r for r in statuses if r[0] == 429)
    assert int(limited_resp[1]["retry-after"]) >= 1 and "rate limit" in limited_resp[2]["error"]
    assert call(node, "GET", "/health")[0] == 200, "anonymous loopback callers (this host) are not limited"
    other = rmap2p("tokens", "create", "--key-file", str(limited["ring"])).stdout.strip()
    assert call(node, "GET", "/health", headers={"Authorization": f"Bearer {other}"})[0] == 200, "buckets are per token"
    assert call(node, "GET", "/api/admin/stats")[2]["http"]["rate_limited"] >= 1
    # The CLI on the node's host: keys and leave without handling any token.
    listed = rmap2p("keys", "list", "--http", node.http, "--data-dir", str(node.data_dir))
    assert listed.returncode == 0 and "(primary)" in listed.stdout, listed.stderr
    left = rmap2p("leave", "--http", node.http, "--data-dir", str(node.data_dir))
    assert left.returncode == 0, left.stderr
    assert node.proc is not None and node.proc.wait(timeout=15) == 0


def test_tokens_create_needs_a_keyring(tmp_path: Path) -> None:
    out = rmap2p("tokens", "create")
    assert out.returncode == 1 and "--key-file" in out.stderr and out.stdout == ""
    out = rmap2p("tokens", "create", "--key-file", str(tmp_path / "nope.json"))
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = rmap2p("tokens", "create", "--expires", "soon", "--key-file", str(tmp_path / "nope.json"))
    assert out.returncode == 2 and "duration" in out.stderr
