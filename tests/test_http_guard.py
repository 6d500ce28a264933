"""The pure decisions of rmap2p/http_guard.py, table-tested (the middlewares themselves run live in
tests/test_http_security.py, tests/test_http_fuzz.py and tests/test_netns_http_security.py)."""

from __future__ import annotations

import json

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, LineTooLong

from rmap2p.http_guard import (
    HttpPolicy,
    bearer,
    coordinator_allows,
    coordinator_suffix,
    is_loopback,
    is_operator_action,
    json_depth,
    needs_client_token,
    parser_error,
)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False), ("::ffff:10.0.0.5", False), ("fe80::1%eth0", False), ("0.0.0.0", False),
        ("", False), (None, False), ("localhost", False), ("not an address", False),
    ],
)
def test_is_loopback(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/admin/leave", True), ("GET", "/api/admin/leave", True), ("GET", "/api/admin/keys", True),
        ("POST", "/api/admin/keys", True), ("DELETE", "/api/admin/workers", True), ("POST", "/api/admin/anything", True),
        ("GET", "/api/admin/workers", False), ("HEAD", "/api/admin/stats", False), ("OPTIONS", "/api/admin/gaps", False),
        ("POST", "/api/service/coordinator/api/admin/leave", False), ("POST", "/api/coordinator/broadcast-job", False),
    ],
)
def test_is_operator_action(method: str, path: str, expected: bool) -> None:
    assert is_operator_action(method, path) is expected


@pytest.mark.parametrize(
    ("raw", "suffix"),
    [
        ("/api/service/coordinator/api/admin/workers", "/api/admin/workers"),
        ("/api/service/coordinator/api/admin/workers?x=1", "/api/admin/workers"),
        ("/api/service/Coordinator/health", "/health"),
        ("/api/service/%63oordinator/api/admin/leave", "/api/admin/leave"),
        ("/api/service/coordinator", "/"),
        ("/api/service/coordinator/", "/"),
        ("/api/service/coordinator//api/admin/leave", "//api/admin/leave"),
        ("/api/service/ner/api/admin/leave", None),
        ("/api/admin/leave", None),
        ("/api/service", None),
        ("", None),
    ],
)
def test_coordinator_suffix(raw: str, suffix: str | None) -> None:
    assert coordinator_suffix(raw) == suffix


@pytest.mark.parametrize(
    ("method", "suffix", "allowed"),
    [
        ("GET", "/api/admin/workers", True), ("HEAD", "/health", True), ("GET", "/api/admin/stats", True),
        ("POST", "/api/coordinator/broadcast-job", True),
        ("GET", "/api/coordinator/broadcast-job", False), ("POST", "/api/admin/workers", False),
        ("GET", "/api/admin/keys", False), ("POST", "/api/admin/leave", False), ("GET", "/api/admin/%6Beys", False),
        ("GET", "/api/admin/workers/", False), ("GET", "/api/admin/../admin/keys", False), ("GET", "/", False),
        ("POST", "/api/worker/job", False), ("PUT", "/api/coordinator/broadcast-job", False),
    ],
)
def test_coordinator_allows(method: str, suffix: str, allowed: bool) -> None:
    assert coordinator_allows(method, suffix) is allowed


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/service/ner/x", True), ("/api/service/coordinator/health", True), ("/api/coordinator/broadcast-job", True),
        ("/api/worker/job", True), ("/health", False), ("/api/admin/workers", False), ("/api/servicex", False),
    ],
)
def test_needs_client_token(path: str, expected: bool) -> None:
    assert needs_client_token(path) is expected


@pytest.mark.parametrize(
    ("doc", "depth"),
    [
        (1, 0), ("x", 0), ([], 1), ({}, 1), ([[[]]], 3), ({"a": [1, {"b": []}]}, 4), ([1, [2], [[3]]], 3),
    ],
)
def test_json_depth(doc: object, depth: int) -> None:
    assert json_depth(doc, 64) == depth


def test_json_depth_stops_counting_past_the_limit_without_recursion() -> None:
    doc: list = []
    for _ in range(5000):  # deeper than the interpreter's recursion limit
        doc = [doc]
    assert json_depth(doc, 64) == 65
    assert json_depth(json.loads("[" * 500 + "]" * 500), 1000) == 500


@pytest.mark.parametrize(
    ("value", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("abc", None), (None, None)],
)
def test_bearer(value: str | None, token: str | None) -> None:
    assert bearer({"Authorization": value} if value is not None else {}) == token


@pytest.mark.parametrize(
    ("exc", "status", "says"),
    [
        (LineTooLong(bytearray(b"/aaaa..."), 8190), 414, "URL"),
        (LineTooLong(b"http://x/aaa...", 8190), 414, "URL"),
        (LineTooLong(b"aaaa...", 8190), 431, "header"),
        (BadHttpMessage("Too many headers"), 431, "too many"),
        (BadStatusLine("\x16\x03"), 400, "malformed"),
        (None, 400, "malformed"),
    ],
)
def test_parser_error(exc: BaseException | None, status: int, says: str) -> None:
    got, text = parser_error(exc, getattr(exc, "message", None))
    assert got == status and says in text


@pytest.mark.parametrize(
    ("env", "rate", "burst"),
    [({}, 50.0, 100), ({"RMAP2P_RATE_LIMIT": "5/7"}, 5.0, 7), ({"RMAP2P_RATE_LIMIT": "off"}, 0.0, 100),
     ({"RMAP2P_RATE_LIMIT": " "}, 50.0, 100)],
)
def test_policy_from_env(env: dict[str, str], rate: float, burst: int) -> None:
    lim = HttpPolicy.from_env(env).rate_limit
    assert (lim.rate, lim.burst) == (rate, burst)


@pytest.mark.parametrize(
    ("value", "hold"), [(None, 15.0), ("0", 0.0), ("20", 20.0), (" 7.5 ", 7.5), ("", 15.0)],
)
def test_gateway_hold_from_env(value: str | None, hold: float) -> None:
    env = {} if value is None else {"RMAP2P_GATEWAY_HOLD": value}
    assert HttpPolicy.from_env(env).gateway_hold == hold


@pytest.mark.parametrize("bad", ["-1", "301", "soon", "nan", "inf"])
def test_gateway_hold_refuses_what_is_not_a_wait(bad: str) -> None:
    with pytest.raises(ValueError, match="RMAP2P_GATEWAY_HOLD"):
        HttpPolicy.from_env({"RMAP2P_GATEWAY_HOLD": bad})
