from __future__ import annotations

import asyncio
import struct
import tracemalloc

import pytest

from p2p.keyring import Keyring
from p2p.stream import (
    AUTH_REFUSED,
    STREAM_AAD,
    AuthRefused,
    FrameTooLarge,
    StreamError,
    StreamServer,
    encode_frame,
    request,
    stream_aad,
)

LOOPBACK = "127.0.0.1"
K1 = bytes(range(32))
K2 = bytes(range(1, 33))


async def echo(payload: bytes, peer: tuple[str, int]) -> bytes:
    return b"echo:" + payload


async def _raw_exchange(addr: tuple[str, int], data: bytes, *, eof: bool = True) -> bytes:
    """Send raw bytes, then read until the server closes; returns what it sent back."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(data)
        await writer.drain()
        if eof:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        # Closing with our unread bytes in its buffer makes the server's kernel send RST.
        return b""
    finally:
        writer.close()


async def test_round_trip_without_sealing() -> None:
    async with StreamServer(LOOPBACK, 0, echo) as server:
        reply = await request(server.local_addr, b"state", timeout=5)
        assert reply == b"echo:state"
        assert server.stats.frames_in == 1 and server.stats.frames_out == 1
        assert server.stats.bytes_in == 4 + 5


async def test_round_trip_over_ipv6_loopback() -> None:
    async with StreamServer("::1", 0, echo) as server:
        assert server.local_addr[0] == "::1" and len(server.local_addr) == 2
        assert await request(server.local_addr, b"v6", timeout=5) == b"echo:v6"


async def test_round_trip_with_sealing() -> None:
    ring = Keyring.single(K1)
    async with StreamServer(LOOPBACK, 0, echo, ring) as server:
        reply = await request(server.local_addr, b"x" * 100_000, ring, timeout=5)
        assert reply == b"echo:" + b"x" * 100_000
        assert server.stats.bytes_in == 4 + 100_000 + ring.overhead


async def test_no_reply_expected() -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def sink(payload: bytes, peer: tuple[str, int]) -> None:
        got.put_nowait(payload)
        return None

    async with StreamServer(LOOPBACK, 0, sink) as server:
        assert await request(server.local_addr, b"push", timeout=5, expect_reply=False) is None
        async with asyncio.timeout(5):
            assert await got.get() == b"push"
        # Asking for a reply the handler does not give is a clear client error.
        with pytest.raises(StreamError, match="without a complete reply"):
            await request(server.local_addr, b"push", timeout=5)


async def test_handler_sees_peer_address() -> None:
    seen: list[tuple[str, int]] = []

    async def handler(payload: bytes, peer: tuple[str, int]) -> bytes:
        seen.append(peer)
        return b""

    async with StreamServer(LOOPBACK, 0, handler) as server:
        assert await request(server.local_addr, b"", timeout=5) == b""
    assert seen[0][0] == LOOPBACK and seen[0][1] > 0


async def test_2gib_header_rejected_without_allocating() -> None:
    async with StreamServer(LOOPBACK, 0, echo) as server:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            # Announce 2 GiB and then actually start sending a body.
            answer = await _raw_exchange(
                server.local_addr, struct.pack(">I", 2**31) + b"A" * 65536, eof=False
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert answer == b""
        assert server.stats.dropped_oversize == 1
        assert peak - before < 16 * 1024 * 1024
        # And the server keeps answering.
        assert await request(server.local_addr, b"ok?", timeout=5) == b"echo:ok?"


async def test_frame_just_over_limit_rejected_at_limit_accepted() -> None:
    async with StreamServer(LOOPBACK, 0, echo, max_frame=1000) as server:
        assert await _raw_exchange(server.local_addr, encode_frame(b"x" * 1001)) == b""
        assert server.stats.dropped_oversize == 1
        reply = await _raw_exchange(server.local_addr, encode_frame(b"y" * 995))
        assert reply == encode_frame(b"echo:" + b"y" * 995)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",  # connect and close
        b"\x00\x00",  # truncated header
        b"\x00\x00\x00\x10abc",  # truncated body
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # wrong protocol: "GET " is ~1.2 GB
    ],
)
async def test_garbage_and_truncated_frames_dropped(garbage: bytes) -> None:
    async with StreamServer(LOOPBACK, 0, echo) as server:
        assert await _raw_exchange(server.local_addr, garbage) == b""
        stats = server.stats
        assert stats.dropped_malformed + stats.dropped_oversize == 1
        assert stats.frames_out == 0
        assert await request(server.local_addr, b"still", timeout=5) == b"echo:still"


async def test_wrong_key_and_plaintext_dropped_and_counted() -> None:
    ring = Keyring.single(K1)
    async with StreamServer(LOOPBACK, 0, echo, ring) as server:
        with pytest.raises(AuthRefused, match="different keyring"):
            await request(server.local_addr, b"intruder", Keyring.single(K2), timeout=5)
        with pytest.raises(AuthRefused):
            await request(server.local_addr, b"plaintext", timeout=5)
        # A sealed UDP datagram replayed as a frame does not open either (different AAD):
        # the answer is the unsealed refusal marker, nothing of the handler's.
        refused = await _raw_exchange(server.local_addr, encode_frame(ring.seal(b"x", b"rmap2p/udp")))
        assert refused == encode_frame(AUTH_REFUSED)
        assert server.stats.dropped_unauthenticated == 3
        assert await request(server.local_addr, b"friend", ring, timeout=5) == b"echo:friend"


async def test_reply_under_wrong_key_is_client_error() -> None:
    async with StreamServer(LOOPBACK, 0, echo, Keyring([K2], K1)) as server:
        # Client can seal with K2 (server has it installed) but cannot read K1 replies.
        with pytest.raises(StreamError, match="authentication"):
            await request(server.local_addr, b"x", Keyring.single(K2), timeout=5)


async def test_rotation_on_a_live_server() -> None:
    server_ring = Keyring.single(K1)
    async with StreamServer(LOOPBACK, 0, echo, server_ring) as server:
        server_ring.install(K2)
        client = Keyring([K1], K2)  # switched first
        assert await request(server.local_addr, b"a", client, timeout=5) == b"echo:a"
        server_ring.use(K2)
        server_ring.remove(K1)
        assert await request(server.local_addr, b"b", Keyring.single(K2), timeout=5) == b"echo:b"


async def test_handler_exception_logged_counted_server_survives(caplog) -> None:
    async def broken(payload: bytes, peer: tuple[str, int]) -> bytes:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        return b"fine"

    async with StreamServer(LOOPBACK, 0, broken) as server:
        with pytest.raises(StreamError):
            await request(server.local_addr, b"boom", timeout=5)
        assert server.stats.handler_errors == 1
        assert "handler failed" in caplog.text
        assert await request(server.local_addr, b"ok", timeout=5) == b"fine"


async def test_read_timeout_frees_the_connection() -> None:
    async with StreamServer(LOOPBACK, 0, echo, read_timeout=0.2) as server:
        # Send half a header and go silent: the server gives up after read_timeout.
        answer = await _raw_exchange(server.local_addr, b"\x00\x00", eof=False)
        assert answer == b""
        assert server.stats.timeouts == 1
        assert server.active_connections == 0


async def test_concurrency_bound() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    inside = 0

    async def slow(payload: bytes, peer: tuple[str, int]) -> bytes:
        nonlocal inside
        inside += 1
        if inside == 2:
            entered.set()
        await release.wait()
        return b"done"

    async with StreamServer(LOOPBACK, 0, slow, max_connections=2) as server:
        first = asyncio.ensure_future(request(server.local_addr, b"1", timeout=5))
        second = asyncio.ensure_future(request(server.local_addr, b"2", timeout=5))
        async with asyncio.timeout(5):
            await entered.wait()
        assert server.active_connections == 2
        # A third connection is closed at once instead of queueing.
        with pytest.raises(StreamError):
            await request(server.local_addr, b"3", timeout=5)
        assert server.stats.rejected_busy == 1
        release.set()
        assert await first == b"done" and await second == b"done"
        assert await request(server.local_addr, b"4", timeout=5) == b"done"


async def test_close_cancels_open_connections() -> None:
    started = asyncio.Event()

    async def hang(payload: bytes, peer: tuple[str, int]) -> bytes:
        started.set()
        await asyncio.Event().wait()
        return b""

    server = StreamServer(LOOPBACK, 0, hang, read_timeout=30)
    await server.start()
    client = asyncio.ensure_future(request(server.local_addr, b"x", timeout=30))
    async with asyncio.timeout(5):
        await started.wait()
    async with asyncio.timeout(5):
        await server.close()
    assert server.active_connections == 0
    with pytest.raises(StreamError):
        async with asyncio.timeout(5):
            await client


async def test_client_errors() -> None:
    # Nothing listening.
    async with StreamServer(LOOPBACK, 0, echo) as server:
        addr = server.local_addr
    with pytest.raises(StreamError):
        await request(addr, b"x", timeout=5)
    # Payload over the limit never leaves the client.
    with pytest.raises(FrameTooLarge):
        await request(addr, b"x" * 2000, timeout=5, max_frame=1000)
    assert issubclass(FrameTooLarge, StreamError)


async def test_client_timeout() -> None:
    release = asyncio.Event()

    async def slow(payload: bytes, peer: tuple[str, int]) -> bytes:
        await release.wait()
        return b"late"

    async with StreamServer(LOOPBACK, 0, slow) as server:
        with pytest.raises(StreamError, match="no reply within"):
            await request(server.local_addr, b"x", timeout=0.2)
        release.set()


async def test_oversized_reply_from_server_rejected_by_client() -> None:
    async def big(payload: bytes, peer: tuple[str, int]) -> bytes:
        return b"z" * 5000

    async with StreamServer(LOOPBACK, 0, big) as server:
        with pytest.raises(StreamError, match="exceeds"):
            await request(server.local_addr, b"x", timeout=5, max_frame=1000)


@pytest.mark.parametrize("tcp_cluster", ["rmap2p", "a", "", "udp/x"])
@pytest.mark.parametrize("udp_cluster", ["rmap2p", "a", "", "tcp/x"])
def test_stream_aad_differs_from_udp(tcp_cluster: str, udp_cluster: str) -> None:
    # Different labels, so no pair of cluster names makes a datagram open as a frame.
    from p2p.transport import udp_aad

    assert stream_aad(tcp_cluster) != udp_aad(udp_cluster)
    assert STREAM_AAD != udp_aad(udp_cluster)
    assert stream_aad(tcp_cluster).startswith(b"rmap2p/tcp/")


async def test_handler_returning_non_bytes_is_counted() -> None:
    async def wrong(payload: bytes, peer: tuple[str, int]) -> bytes:
        return "text, not bytes"  # type: ignore[return-value]

    async with StreamServer(LOOPBACK, 0, wrong, Keyring.single(K1)) as server:
        with pytest.raises(StreamError):
            await request(server.local_addr, b"x", Keyring.single(K1), timeout=5)
        assert server.stats.handler_errors == 1
