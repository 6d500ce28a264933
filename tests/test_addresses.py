"""Bind and advertised addresses: HTTP follows the gossip host unless told otherwise."""

from __future__ import annotations

import pytest

from rmap2p.addresses import (
    advertised_http,
    default_http_bind,
    is_loopback,
    loopback_http_problem,
    wildcard_for,
)


@pytest.mark.parametrize(
    ("bind", "http"),
    [
        (("0.0.0.0", 7946), ("0.0.0.0", 8080)),
        (("::", 7946), ("::", 8080)),
        (("10.0.0.5", 7946), ("10.0.0.5", 8080)),
        (("fd00::5", 17946), ("fd00::5", 8080)),
        (("127.0.0.1", 0), ("127.0.0.1", 8080)),
    ],
)
def test_default_http_bind_follows_the_gossip_host(bind: tuple[str, int], http: tuple[str, int]) -> None:
    assert default_http_bind(bind) == http


@pytest.mark.parametrize(
    ("http_bind", "gossip_bind_host", "gossip_addr", "advertised"),
    [
        # wildcard: where peers reach our gossip
        (("0.0.0.0", 8080), "0.0.0.0", ("10.0.0.5", 7946), "10.0.0.5:8080"),
        (("::", 8080), "::", ("fd00::5", 7946), "[fd00::5]:8080"),
        # the gossip bind host with --advertise (NAT): the advertised host, our HTTP port
        (("10.0.0.5", 8080), "10.0.0.5", ("203.0.113.4", 7946), "203.0.113.4:8080"),
        (("10.0.0.5", 8080), "10.0.0.5", ("10.0.0.5", 7946), "10.0.0.5:8080"),
        # an explicit other host is advertised as bound
        (("127.0.0.1", 8080), "10.0.0.5", ("10.0.0.5", 7946), "127.0.0.1:8080"),
        (("10.0.0.6", 9000), "10.0.0.5", ("10.0.0.5", 7946), "10.0.0.6:9000"),
        # before the gossip address is known
        (("0.0.0.0", 8080), "0.0.0.0", None, "0.0.0.0:8080"),
    ],
)
def test_advertised_http(
    http_bind: tuple[str, int], gossip_bind_host: str, gossip_addr: tuple[str, int] | None, advertised: str
) -> None:
    assert advertised_http(http_bind, gossip_bind_host, gossip_addr) == advertised


@pytest.mark.parametrize(
    ("http_host", "members", "own", "problem"),
    [
        ("127.0.0.1", ["10.0.0.2", "127.0.0.1"], "10.0.0.1", "10.0.0.2"),
        ("127.0.0.1", ["127.0.0.1", "127.0.0.2"], "127.0.0.1", None),  # all on this host
        ("127.0.0.1", ["10.0.0.1"], "10.0.0.1", None),  # same host, other gossip ports
        ("127.0.0.1", [], "10.0.0.1", None),  # alone
        ("::1", ["fd00::2"], "fd00::1", "fd00::2"),
        ("localhost", ["10.0.0.3", "10.0.0.2"], "10.0.0.1", "10.0.0.2"),
        ("0.0.0.0", ["10.0.0.2"], "10.0.0.1", None),
        ("10.0.0.1", ["10.0.0.2"], "10.0.0.1", None),
    ],
)
def test_loopback_http_problem(http_host: str, members: list[str], own: str, problem: str | None) -> None:
    assert loopback_http_problem(http_host, members, own) == problem


def test_wildcard_for_the_family() -> None:
    assert wildcard_for("127.0.0.1") == "0.0.0.0"
    assert wildcard_for("::1") == "[::]"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")
