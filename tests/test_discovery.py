from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from p2p.discovery import (
    BootstrapError,
    ResolveError,
    find_bootstrap_file,
    format_host_port,
    load_bootstrap,
    parse_bootstrap,
    parse_host_port,
    resolve,
    resolve_many,
)

GOOD = """\
# Edge nodes
edge1.example.org:7946
  203.0.113.7:7000   # trailing comment

[2001:db8::1]:7946
[fe80::1%eth0]:7946
edge1.example.org:7946
EDGE1.example.org:7946
localhost:1
"""


def test_parse_good_file() -> None:
    assert parse_bootstrap(GOOD) == [
        ("edge1.example.org", 7946),
        ("203.0.113.7", 7000),
        ("2001:db8::1", 7946),
        ("fe80::1%eth0", 7946),
        ("localhost", 1),
    ]


def test_parse_empty_and_comment_only() -> None:
    assert parse_bootstrap("") == []
    assert parse_bootstrap("# nothing\n\n   \n# here\n") == []


def test_repository_bootstrap_file_parses() -> None:
    path = Path(__file__).resolve().parent.parent / "bootstrap_nodes.txt"
    assert isinstance(load_bootstrap(path), list)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("edge1.example.org", "missing ':port'"),
        ("edge1:0", "out of range"),
        ("edge1:65536", "out of range"),
        ("edge1:http", "not a number"),
        ("edge1:", "not a number"),
        (":7946", "missing host"),
        ("2001:db8::1:7946", "need brackets"),
        ("[2001:db8::1:7946", "unclosed"),
        ("[2001:db8::1]7946", "expected ':port'"),
        ("[not-v6]:7946", "not an IPv6"),
        ("bad_host!:7946", "not a valid host"),
        ("-bad.example:7946", "not a valid host"),
        ("300.1.2.3:7946", "not a valid IPv4"),
        ("a" * 64 + ".example:7946", "not a valid host"),
    ],
)
def test_bad_lines(line: str, reason: str) -> None:
    with pytest.raises(BootstrapError, match=reason) as info:
        parse_bootstrap(line)
    assert info.value.problems[0].lineno == 1
    assert info.value.addresses == []


def test_bad_lines_reported_with_numbers_and_good_lines_kept() -> None:
    text = "good.example:1\nbroken\n# ok\n10.0.0.1:2\nalso broken:x\n"
    with pytest.raises(BootstrapError) as info:
        parse_bootstrap(text)
    err = info.value
    assert [p.lineno for p in err.problems] == [2, 5]
    assert err.addresses == [("good.example", 1), ("10.0.0.1", 2)]
    assert "line 2" in str(err) and "line 5" in str(err)
    assert isinstance(err, ValueError)


def test_default_port_for_bare_hosts() -> None:
    assert parse_bootstrap("edge1\n[::1]\n10.0.0.1", default_port=7946) == [
        ("edge1", 7946),
        ("::1", 7946),
        ("10.0.0.1", 7946),
    ]


def test_parse_host_port_for_cli_values() -> None:
    assert parse_host_port("0.0.0.0:7946") == ("0.0.0.0", 7946)
    assert parse_host_port("[::]:8080") == ("::", 8080)
    with pytest.raises(ValueError):
        parse_host_port("")


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (("10.0.0.1", 7946), "10.0.0.1:7946"),
        (("edge.example", 1), "edge.example:1"),
        (("fd00:213:7::11", 7946), "[fd00:213:7::11]:7946"),
        (("fe80::1%eth0", 7946), "[fe80::1%eth0]:7946"),
    ],
)
def test_format_host_port_is_what_parse_host_port_reads(addr: tuple[str, int], text: str) -> None:
    assert format_host_port(*addr) == text
    assert parse_host_port(text) == addr


def test_load_bootstrap_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "bootstrap_nodes.txt"
    path.write_text("ok.example:1\nnope\n")
    with pytest.raises(BootstrapError, match=str(path)) as info:
        load_bootstrap(path)
    assert info.value.addresses == [("ok.example", 1)]
    with pytest.raises(BootstrapError, match="cannot read"):
        load_bootstrap(tmp_path / "absent.txt")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(BootstrapError, match="not UTF-8"):
        load_bootstrap(path)


def test_find_bootstrap_file_order(tmp_path) -> None:
    cwd = tmp_path / "cwd"
    data = tmp_path / "data"
    cwd.mkdir()
    data.mkdir()
    assert find_bootstrap_file(None, data, cwd=cwd) is None
    (data / "bootstrap_nodes.txt").write_text("")
    assert find_bootstrap_file(None, data, cwd=cwd) == data / "bootstrap_nodes.txt"
    (cwd / "bootstrap_nodes.txt").write_text("")
    assert find_bootstrap_file(None, data, cwd=cwd) == cwd / "bootstrap_nodes.txt"
    explicit = tmp_path / "mine.txt"
    explicit.write_text("")
    assert find_bootstrap_file(str(explicit), data, cwd=cwd) == explicit
    with pytest.raises(BootstrapError, match="does not exist"):
        find_bootstrap_file(str(tmp_path / "missing.txt"), data, cwd=cwd)


async def test_resolve_literal_without_lookup() -> None:
    assert await resolve("127.0.0.1", 7946) == [("127.0.0.1", 7946)]
    assert await resolve("::1", 7946) == [("::1", 7946)]


async def test_resolve_localhost() -> None:
    addrs = await resolve("localhost", 7946, family=socket.AF_INET)
    assert ("127.0.0.1", 7946) in addrs
    assert len(addrs) == len(set(addrs))


async def test_resolve_failure_is_resolve_error() -> None:
    # .invalid is reserved (RFC 2606): it never resolves, and fails fast.
    with pytest.raises(ResolveError):
        await resolve("no-such-host.invalid", 1, timeout=5)


async def test_resolve_many_skips_failures() -> None:
    got = await resolve_many([("127.0.0.1", 1), ("no-such-host.invalid", 2), ("127.0.0.1", 1)], timeout=5)
    assert got == [("127.0.0.1", 1)]


async def test_resolve_timeout(monkeypatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args, **kwargs):
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "getaddrinfo", never)
    with pytest.raises(ResolveError, match="longer than"):
        await resolve("slow.example", 1, timeout=0.05)
