"""Generated requests against every endpoint of a live node: never a 500, always JSON errors, node intact.

Hypothesis builds methods, paths (every endpoint, with generated suffixes,
percent-escapes and query strings), headers (random ones and our own:
route, hops, signature, operator, Authorization, Content-Type) and bodies
(random bytes, generated JSON of any shape and depth, deep nesting) and
sends each to a real daemon in a pool with a keyring. A 5xx may only be the
gateway saying a service is unavailable (502/503/508, with a JSON error);
anything else that is an error must be a 4xx with ``{"error": ...}``.
Afterwards the node is healthy, its view unchanged, and its log holds no
traceback.
"""

from __future__ import annotations

import http.client
import json
import posixpath
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import NodeProc, wait_for

from rmap2p.http_guard import is_operator_action

pytestmark = pytest.mark.slow

ENDPOINTS = [
    "/", "/health", "/metrics", "/api/admin/workers", "/api/admin/services", "/api/admin/gaps", "/api/admin/leaders",
    "/api/admin/stats", "/api/admin/keys", "/api/admin/leave", "/api/coordinator/broadcast-job", "/api/worker/job",
    "/api/service/ner/extract", "/api/service/ner-extraction", "/api/service/coordinator/api/admin/workers",
    "/api/service/coordinator/api/admin/leave", "/api/service/llm/v1/chat/completions", "/api/service/teleport/x",
    "/api/service/document-processing/health",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "FOO"]
OURS = ["X-Rmap2p-Route", "X-Rmap2p-Hops", "X-Rmap2p-Signature", "X-Rmap2p-Operator", "Authorization", "Content-Type",
        "Content-Encoding", "Transfer-Encoding", "Expect"]

_token_chars = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"), min_size=1, max_size=20)
_value_chars = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
_path_chars = st.text(st.sampled_from("abcXYZ019-._~!$&'()*+,;=:@/%?#[]{}<>\"\\^`| "), max_size=60)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(ENDPOINTS))
    suffix = draw(st.one_of(st.just(""), _path_chars.map(lambda s: "/" + s)))
    text = base + suffix
    # http.client refuses control characters and spaces in the URL; percent-escape what it would refuse.
    text = "".join(c if 0x21 <= ord(c) <= 0x7E else f"%{ord(c):02X}" for c in text)
    return text.replace("#", "%23")


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=2000))
    if kind == 2:
        return json.dumps(draw(json_values)).encode()
    if kind == 3:
        depth = draw(st.integers(1, 5000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    if kind == 4:
        doc = {"job_type": draw(json_values), "job_data": draw(json_values), "required_capability": draw(json_values)}
        return json.dumps(doc).encode()
    doc = {"action": draw(st.sampled_from(["install", "use", "remove", "x"]) | json_values), "key": draw(json_values),
           "fingerprint": draw(json_values)}
    return json.dumps(doc).encode()


@st.composite
def header_sets(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(OURS) | _token_chars, max_size=6, unique_by=str.lower))
    return {name: draw(_value_chars).strip() for name in names}


def rmap2p(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "rmap2p", *args], capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    tmp = tmp_path_factory.mktemp("fuzz")
    ring = tmp / "ring.json"
    rmap2p("keygen", "--key-file", str(ring))
    n = NodeProc("f0", tmp, extra=["--type", "cpu", "--key-file", str(ring)], services=True)
    try:
        n.start().wait_healthy()
        wait_for(lambda: n.view()["f0"]["services_status"].get("ner-extraction") == "healthy", 30, "ner to run")
        yield n
    except BaseException:
        print(n.tail(80))
        raise
    finally:
        n.terminate()


def operator_action(method: str, path: str) -> bool:
    """Whether any reading of ``path`` (raw, percent-decoded, dot segments resolved) is an operator action."""
    raw = path.split("?", 1)[0]
    forms = {raw, urllib.parse.unquote(raw)}
    forms |= {"/" + posixpath.normpath(f).lstrip("/") for f in list(forms)}
    return any(is_operator_action(method, f) for f in forms)


def send(node: NodeProc, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=15)
    try:
        conn.request(method, path, body=body, headers={**headers, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), path=paths(), headers=header_sets(), body=bodies())
def test_generated_requests_never_get_a_500(node: NodeProc, method: str, path: str, headers: dict[str, str],
                                            body: bytes | None) -> None:
    if operator_action(method, path):
        # From loopback this is the operator (a leave would end the run): make it a forwarded one,
        # which the node must refuse whatever else the request holds.
        headers = {**headers, "X-Rmap2p-Hops": "0"}
    try:
        status, ctype, raw = send(node, method, path, headers, body)
    except (http.client.HTTPException, ConnectionError) as exc:
        pytest.fail(f"{method} {path} {headers}: no HTTP answer ({exc!r})")
    assert status != 500, (method, path, headers, body and body[:200], raw[:300])
    if status >= 500:
        assert status in (502, 503, 508), (status, method, path, raw[:300])
    if status >= 400 and method != "HEAD":
        assert ctype.startswith("application/json"), (status, method, path, ctype, raw[:300])
        doc: Any = json.loads(raw)
        assert isinstance(doc, dict) and doc.get("error"), (status, method, path, doc)


def test_the_node_is_intact_after_the_fuzzing(node: NodeProc) -> None:
    view = node.view()
    assert list(view) == ["f0"] and view["f0"]["status"] == "alive"
    assert node.get("/health")["status"] == "ok"
    assert node.alive()
    log = node.log.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
