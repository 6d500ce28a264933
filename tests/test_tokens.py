"""Client tokens (p2p/tokens.py), the token CLI's duration parser, and the rate limiter: pure, table-tested."""

from __future__ import annotations

import base64

import pytest

from p2p.tokens import (
    CLAIM_BYTES,
    PREFIX,
    TOKEN_BYTES,
    Token,
    TokenError,
    create_token,
    derive_token_key,
    verify_token,
)
from rmap2p.cmd_tokens import parse_duration
from rmap2p.ratelimit import RateLimit, RateLimiter

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
K3 = bytes(32)
ID = bytes.fromhex("00112233445566778899aabbccddeeff")
T0 = 1_800_000_000


def _keys(*keys: bytes) -> list[bytes]:
    return [derive_token_key(k) for k in keys]


def test_token_shape_and_round_trip() -> None:
    token = create_token(K1, T0, T0 + 3600, ID)
    assert token.startswith(PREFIX) and len(token) == len(PREFIX) + 87 and "=" not in token
    assert verify_token(token, _keys(K1), T0 + 10) == Token(ID.hex(), T0, T0 + 3600)
    forever = create_token(K1, T0, None, ID)
    assert verify_token(forever, _keys(K1), T0 + 10**9).expires is None


def test_derived_key_is_not_the_cluster_key_and_is_stable() -> None:
    assert derive_token_key(K1) != K1 and len(derive_token_key(K1)) == 32
    assert derive_token_key(K1) == derive_token_key(K1) != derive_token_key(K2)


def _flip(token: str, index: int) -> str:
    body = token[len(PREFIX):]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index] ^= 1
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


GOOD = create_token(K1, T0, T0 + 3600, ID)


@pytest.mark.parametrize(
    ("text", "keys", "now", "says"),
    [
        (GOOD, (K1,), T0 + 3600, "expired"),
        (GOOD, (K1,), T0 + 99999, "expired"),
        (GOOD, (K2,), T0, "not made with a key"),
        (GOOD, (), T0, "not made with a key"),
        (_flip(GOOD, 0), (K1,), T0, "unknown token version"),
        (_flip(GOOD, 5), (K1,), T0, "not made with a key"),  # issued changed
        (_flip(GOOD, 12), (K1,), T0, "not made with a key"),  # expires extended
        (_flip(GOOD, 20), (K1,), T0, "not made with a key"),  # id changed
        (_flip(GOOD, CLAIM_BYTES + 3), (K1,), T0, "not made with a key"),  # MAC changed
        (create_token(K1, T0 + 3600, None, ID), (K1,), T0, "future"),
        ("", (K1,), T0, "not an rmap2p token"),
        ("Bearer " + GOOD, (K1,), T0, "not an rmap2p token"),
        (PREFIX + "!!!!", (K1,), T0, "base64url"),
        (PREFIX + "AAAA", (K1,), T0, f"expected {TOKEN_BYTES}"),
        (GOOD + "AAAA", (K1,), T0, f"expected {TOKEN_BYTES}"),
        (PREFIX + "A" * 400, (K1,), T0, "not an rmap2p token"),
        (None, (K1,), T0, "not an rmap2p token"),
    ],
)
def test_refusals_say_why(text: object, keys: tuple[bytes, ...], now: int, says: str) -> None:
    with pytest.raises(TokenError, match=says):
        verify_token(text, _keys(*keys), now)  # type: ignore[arg-type]


def test_rotation_install_use_remove_revokes_old_tokens() -> None:
    old = create_token(K1, T0, None, ID)
    # install K2, use K2: the ring holds both, primary first; old tokens still pass.
    assert verify_token(old, _keys(K2, K1), T0).token_id == ID.hex()
    new = create_token(K2, T0, None, ID)
    assert verify_token(new, _keys(K2, K1), T0)
    # remove K1: tokens made with it stop working, new ones go on.
    with pytest.raises(TokenError, match="rotated out"):
        verify_token(old, _keys(K2), T0)
    assert verify_token(new, _keys(K2, K3), T0)


@pytest.mark.parametrize(
    ("issued", "expires", "token_id"),
    [(T0, T0, ID), (T0, T0 - 1, ID), (T0, None, ID[:15]), (-1, None, ID)],
)
def test_create_refuses_nonsense(issued: int, expires: int | None, token_id: bytes) -> None:
    with pytest.raises(ValueError):
        create_token(K1, issued, expires, token_id)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("1.5h", 5400),
     (" 7D ", 604800), ("never", None), ("0", None)],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "5y", "1e9", "11000d", "0.1s", "5 minutes"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ---------------------------------------------------------------- rate limits


def test_bucket_allows_a_burst_then_the_rate() -> None:
    lim = RateLimiter(RateLimit(rate=2.0, burst=3))
    assert [lim.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("a", 0.0) == pytest.approx(0.5), "empty: one token back in 1/rate s"
    assert lim.take("b", 0.0) == 0.0, "buckets are per client"
    assert lim.take("a", 0.25) == pytest.approx(0.25)
    assert lim.take("a", 0.5) == 0.0
    assert lim.take("a", 100.0) == 0.0 and lim.take("a", 100.0) == 0.0 and lim.take("a", 100.0) == 0.0
    assert lim.take("a", 100.0) > 0, "refill stops at the burst"


def test_bucket_table_is_bounded_lru() -> None:
    lim = RateLimiter(RateLimit(rate=1.0, burst=1, max_clients=3))
    for c in "abc":
        lim.take(c, 0.0)
    lim.take("a", 0.0)  # a is now most recently used (and empty)
    lim.take("d", 0.0)  # evicts b
    assert len(lim) == 3
    assert lim.take("a", 0.0) > 0, "a kept its (empty) bucket"
    assert lim.take("b", 0.0) == 0.0, "b was evicted and starts full"


@pytest.mark.parametrize(
    ("text", "rate", "burst"),
    [("50/100", 50.0, 100), ("5", 5.0, 10), ("0.5", 0.5, 1), ("off", 0.0, 100), ("0", 0.0, 100)],
)
def test_rate_limit_parse(text: str, rate: float, burst: int) -> None:
    lim = RateLimit.parse(text)
    assert (lim.rate, lim.burst) == (rate, burst)
    assert lim.enabled == (rate > 0)
    assert RateLimiter(RateLimit.parse("off")).take("x", 0.0) == 0.0


@pytest.mark.parametrize("text", ["fast", "5/x", "-1", "nan", "inf", "5/0"])
def test_rate_limit_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(text)
