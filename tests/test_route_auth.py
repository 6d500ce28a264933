"""Signed routes (services/route_auth.py): signing, and every refusal of the verifier, on a manual clock."""

from __future__ import annotations

import pytest

from p2p.identity import NodeIdentity
from services.route_auth import (
    HOPS_HEADER,
    ROUTE_HEADER,
    SIGNATURE_HEADER,
    RouteVerifier,
    sign_route_headers,
)

A = NodeIdentity.generate()
B = NodeIdentity.generate()
OUTSIDER = NodeIdentity.generate()
NOW = 1_800_000_000.0
PATH = "/api/service/ner/extract?lang=en&x=%2F"


def members(*ids: NodeIdentity) -> dict[str, bytes]:
    return {i.node_id: i.public_key for i in ids}


def verifier(me: NodeIdentity = B, view: dict[str, bytes] | None = None, **kw: float) -> RouteVerifier:
    view = members(A, B) if view is None else view
    return RouteVerifier(me.node_id, view.get, **kw)  # type: ignore[arg-type]


def signed(signer: NodeIdentity = A, target: NodeIdentity = B, now: float = NOW, method: str = "POST",
           path: str = PATH, hops: int = 1, nonce: bytes | None = None) -> dict[str, str]:
    return sign_route_headers(signer, method, path, target.node_id, hops, now, nonce)


def test_headers_and_acceptance() -> None:
    headers = signed()
    assert set(headers) == {ROUTE_HEADER, HOPS_HEADER, SIGNATURE_HEADER}
    assert headers[ROUTE_HEADER] == B.node_id and headers[HOPS_HEADER] == "1"
    version, signer, ts, nonce, _ = headers[SIGNATURE_HEADER].split(".")
    assert (version, signer, int(ts), len(nonce)) == ("1", A.node_id, int(NOW * 1000), 16)
    check = verifier().check("POST", PATH, headers, NOW + 1)
    assert check.ok and check.signer == A.node_id and check.reason == ""
    assert verifier().check("post", PATH, signed(method="post"), NOW).ok, "methods compare upper-cased"


def _with(headers: dict[str, str], **changes: str) -> dict[str, str]:
    out = dict(headers)
    for name, value in changes.items():
        header = {"route": ROUTE_HEADER, "hops": HOPS_HEADER, "sig": SIGNATURE_HEADER}[name]
        if value == "<drop>":
            out.pop(header)
        else:
            out[header] = value
    return out


def _resign(field: int, value: str) -> dict[str, str]:
    headers = signed()
    parts = headers[SIGNATURE_HEADER].split(".")
    parts[field] = value
    return _with(headers, sig=".".join(parts))


@pytest.mark.parametrize(
    ("method", "path", "headers", "now", "reason"),
    [
        ("POST", PATH, _with(signed(), sig="<drop>"), NOW, "unsigned"),
        ("POST", PATH, _with(signed(), sig="garbage"), NOW, "malformed"),
        ("POST", PATH, _with(signed(), sig="2" + signed()[SIGNATURE_HEADER][1:]), NOW, "malformed"),
        ("POST", PATH, _with(signed(), sig=signed()[SIGNATURE_HEADER] + "x" * 300), NOW, "malformed"),
        ("POST", PATH, _resign(3, "xyz"), NOW, "malformed"),
        ("POST", PATH, _resign(2, "12a"), NOW, "malformed"),
        ("POST", PATH, _with(signed(), hops="x"), NOW, "malformed"),
        ("POST", PATH, signed(target=A), NOW, "wrong-target"),
        ("POST", PATH, _with(signed(), route=A.node_id), NOW, "wrong-target"),
        ("POST", PATH, signed(signer=OUTSIDER), NOW, "not-a-member"),
        ("POST", PATH, _resign(1, OUTSIDER.node_id), NOW, "not-a-member"),
        ("POST", PATH, signed(), NOW + 31, "stale"),
        ("POST", PATH, signed(), NOW - 31, "stale"),
        ("GET", PATH, signed(), NOW, "bad-signature"),
        ("POST", "/api/service/ner/other", signed(), NOW, "bad-signature"),
        ("POST", PATH, _with(signed(), hops="2"), NOW, "bad-signature"),
        ("POST", PATH, _with(signed(), hops="<drop>"), NOW, "bad-signature"),
        ("POST", PATH, _resign(2, str(int(NOW * 1000) + 1)), NOW, "bad-signature"),
        ("POST", PATH, _resign(3, "00" * 8), NOW, "bad-signature"),
        ("POST", PATH, _resign(4, "A" * 86), NOW, "bad-signature"),
    ],
)
def test_refusals(method: str, path: str, headers: dict[str, str], now: float, reason: str) -> None:
    check = verifier().check(method, path, headers, now)
    assert not check.ok and check.reason == reason


def test_a_member_that_left_or_died_is_refused() -> None:
    view = members(A, B)
    v = RouteVerifier(B.node_id, view.get)
    assert v.check("POST", PATH, signed(), NOW).ok
    del view[A.node_id]  # what the daemon's lookup returns once A is dead or left
    assert v.check("POST", PATH, signed(), NOW).reason == "not-a-member"


def test_replays_are_refused_and_the_cache_is_bounded() -> None:
    v = verifier(cache_size=3)
    first = signed(nonce=b"\x00" * 8)
    assert v.check("POST", PATH, first, NOW).ok
    assert v.check("POST", PATH, first, NOW + 1).reason == "replayed"
    # Same request, same millisecond, another nonce: a second legitimate request.
    assert v.check("POST", PATH, signed(nonce=b"\x01" * 8), NOW).ok
    for i in range(2, 6):
        assert v.check("POST", PATH, signed(now=NOW + i, nonce=bytes([i]) * 8), NOW + i).ok
    assert len(v) == 3
    # The first two were evicted: their timestamps are under the floor now, so still refused.
    assert v.check("POST", PATH, first, NOW + 6).reason == "replayed"
    assert v.check("POST", PATH, signed(now=NOW + 1, nonce=b"\x09" * 8), NOW + 6).reason == "replayed", (
        "older than the newest eviction: cannot be told from a replay"
    )
    assert v.check("POST", PATH, signed(now=NOW + 6, nonce=b"\x0a" * 8), NOW + 6).ok


def test_entries_expire_with_the_window() -> None:
    v = verifier(window=30.0)
    for i in range(10):
        assert v.check("POST", PATH, signed(now=NOW + i, nonce=bytes([i]) * 8), NOW + i).ok
    assert len(v) == 10
    v.check("POST", PATH, signed(now=NOW + 100), NOW + 100)
    assert len(v) == 1, "everything older than the window went"


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RouteVerifier("x", lambda _: None, window=0)
    with pytest.raises(ValueError):
        RouteVerifier("x", lambda _: None, cache_size=0)
