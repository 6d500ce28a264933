"""A real relay server and client on loopback: datagrams, gossip streams and HTTP both ways, limits.

No daemon here (tests/test_relay_cluster.py has those): one RelayServer,
RelayClients with real identities, and "the pool" played by plain sockets
and an aiohttp client, so each property of the relay is checked alone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from p2p import identity as ident
from p2p.keyring import Keyring, generate_key
from p2p.relay_client import RelayClient, RelayError
from p2p.relay_link import splice
from p2p.relay_server import RelayLimits, RelayServer

LO = "127.0.0.1"


class Node:
    """The relayed node's side: a client whose datagrams land in a queue and whose streams are served locally."""

    def __init__(self, server: RelayServer, http_port: int, sealer: Keyring | None = None) -> None:
        self.identity = ident.NodeIdentity.generate()
        self.datagrams: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.http_port = http_port
        self.peers: list[tuple[str, tuple[str, int]]] = []
        self.client = RelayClient(
            server.local_addr, "edge", self.identity, self._on_datagram, self._on_stream, sealer,
            keepalive=0.2, dead_after=1.0,
        )
        self.runner: asyncio.Task[str] | None = None

    def _on_datagram(self, data: bytes, src: tuple[str, int]) -> None:
        self.datagrams.put_nowait((data, src))

    async def _on_stream(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: tuple[str, int]) -> None:
        self.peers.append((kind, peer))
        if kind == "gossip":
            # What the daemon's StreamServer would do, reduced to an echo of every byte.
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            return
        local = await asyncio.open_connection(LO, self.http_port)
        await splice((reader, writer), local)

    async def start(self) -> None:
        await self.client.connect()
        self.runner = asyncio.get_running_loop().create_task(self.client.run())

    async def stop(self) -> None:
        self.client.close()
        if self.runner is not None:
            await asyncio.wait([self.runner])


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response({"path": request.path, "got": len(body), "peer": request.remote})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"chunk {i}\n".encode())
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/hello", hello)
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, LO, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


async def relay(limits: RelayLimits | None = None, sealer: Keyring | None = None) -> RelayServer:
    server = RelayServer(LO, LO, ident.verify, sealer, limits=limits or RelayLimits(), name="test-relay")
    await server.start()
    return server


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LO, 0))
    s.setblocking(False)
    return s


async def test_datagrams_streams_and_http_cross_the_relay_both_ways(http_server: int) -> None:
    server = await relay()
    node = Node(server, http_server)
    try:
        await node.start()
        alloc = node.client.allocation
        assert alloc is not None and alloc.host == LO and alloc.gossip_port != alloc.http_port
        assert server.allocation_of(node.identity.node_id) == (alloc.gossip_port, alloc.http_port)

        # UDP, pool -> node: the node sees the real sender as the source.
        peer = udp_socket()
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(peer, b"ping-1", (LO, alloc.gossip_port))
        data, src = await asyncio.wait_for(node.datagrams.get(), 5)
        assert data == b"ping-1" and src == peer.getsockname()
        # UDP, node -> pool: sent from the allocation, so the peer sees one address for the node.
        assert node.client.send_datagram(b"ack-1", peer.getsockname())
        data, src = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
        assert data == b"ack-1" and src == (LO, alloc.gossip_port)
        peer.close()

        # TCP on the gossip allocation: a megabyte each way, streamed through the splice.
        reader, writer = await asyncio.open_connection(LO, alloc.gossip_port)
        blob = os.urandom(1 << 20)
        writer.write(blob)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 20)
        assert echoed == blob
        writer.close()
        kind, stream_peer = node.peers[0]
        assert kind == "gossip" and stream_peer[0] == LO

        # HTTP on the HTTP allocation: a plain request, an upload, and a streamed answer.
        base = f"http://{LO}:{alloc.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/hello") as resp:
                assert resp.status == 200 and (await resp.json())["path"] == "/hello"
            async with session.post(f"{base}/hello", data=os.urandom(300_000)) as resp:
                assert (await resp.json())["got"] == 300_000
            async with session.get(f"{base}/stream") as resp:
                chunks = [line async for line in resp.content]
                assert chunks == [f"chunk {i}\n".encode() for i in range(5)]
        stats = server.carried()[node.identity.node_id]
        assert stats.datagrams_in == 1 and stats.datagrams_out == 1 and stats.streams >= 2  # one gossip stream, one kept-alive HTTP connection
        assert stats.bytes_in > (1 << 20) + 300_000 and stats.bytes_out > 1 << 20
    finally:
        await node.stop()
        await server.close()


async def test_a_full_relay_refuses_and_a_closed_control_connection_frees_the_allocation(http_server: int) -> None:
    server = await relay(RelayLimits(max_members=1))
    first, second = Node(server, http_server), Node(server, http_server)
    try:
        await first.start()
        with pytest.raises(RelayError, match="refused: relay full"):
            await second.client.connect()
        assert server.stats.refused_full == 1
        gossip_port = first.client.allocation.gossip_port  # type: ignore[union-attr]
        await first.stop()
        for _ in range(50):
            if not server.carried():
                break
            await asyncio.sleep(0.05)
        assert server.carried() == {}
        with pytest.raises(OSError):
            await asyncio.open_connection(LO, gossip_port)  # the allocation is gone with its member
        await second.start()  # and the place is free again
        assert list(server.carried()) == [second.identity.node_id]
    finally:
        await second.stop()
        await server.close()


async def test_per_member_rate_limits_drop_datagrams_and_slow_streams(http_server: int) -> None:
    rate = 128 * 1024
    server = await relay(RelayLimits(bytes_per_second=rate, burst_bytes=64 * 1024))
    node = Node(server, http_server)
    try:
        await node.start()
        alloc = node.client.allocation
        assert alloc is not None
        peer = udp_socket()
        loop = asyncio.get_running_loop()
        for _ in range(200):  # 200 KB at once: the 64 KiB burst passes, the rest is dropped
            await loop.sock_sendto(peer, os.urandom(1000), (LO, alloc.gossip_port))
        await asyncio.sleep(0.5)
        got = node.datagrams.qsize()
        stats = server.carried()[node.identity.node_id]
        assert 50 <= got <= 130, got
        # (the kernel's own socket buffer may drop some too before the relay sees them)
        assert stats.datagrams_in == got and stats.dropped_rate > 0 and got + stats.dropped_rate <= 200
        peer.close()

        # A stream is paced, not cut: 384 KiB at 128 KiB/s after a 64 KiB burst takes >= 2.5 s.
        await asyncio.sleep(0.6)  # let the bucket refill
        reader, writer = await asyncio.open_connection(LO, alloc.gossip_port)
        blob = os.urandom(384 * 1024)
        started = time.monotonic()
        writer.write(blob)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 30)
        took = time.monotonic() - started
        assert echoed == blob
        assert took >= 2.2, took
        writer.close()
    finally:
        await node.stop()
        await server.close()


async def test_sealed_relay_refuses_another_keyring_and_a_forged_hello(http_server: int) -> None:
    ring = Keyring.single(generate_key())
    server = await relay(sealer=ring)
    good = Node(server, http_server, sealer=ring)
    stranger = Node(server, http_server, sealer=Keyring.single(generate_key()))
    unsealed = Node(server, http_server)
    try:
        await good.start()
        assert good.client.allocation is not None
        for other in (stranger, unsealed):
            with pytest.raises(RelayError):
                await other.client.connect()
        # A hello signed by one key in another node's name does not verify.
        impostor = Node(server, http_server, sealer=ring)
        victim_id = good.identity.node_id
        real = impostor.identity

        class Forged:
            node_id = victim_id
            public_key = real.public_key

            @staticmethod
            def sign(payload: bytes) -> bytes:
                return real.sign(payload)

        impostor.client.identity = Forged()  # type: ignore[assignment]
        with pytest.raises(RelayError, match="signature"):
            await impostor.client.connect()
        assert server.stats.refused_auth == 1
        assert list(server.carried()) == [good.identity.node_id]  # the victim keeps its allocation
    finally:
        await good.stop()
        await server.close()


async def test_the_client_notices_a_dead_relay(http_server: int) -> None:
    server = await relay()
    node = Node(server, http_server)
    await node.start()
    assert node.runner is not None
    await server.close()
    reason = await asyncio.wait_for(node.runner, 5)
    assert "connection lost" in reason or "keepalives" in reason


async def test_streams_beyond_max_streams_are_refused_and_counted(http_server: int) -> None:
    server = await relay(RelayLimits(max_streams=1))
    node = Node(server, http_server)
    try:
        await node.start()
        alloc = node.client.allocation
        assert alloc is not None
        r1, w1 = await asyncio.open_connection(LO, alloc.gossip_port)
        w1.write(b"first")
        assert await asyncio.wait_for(r1.readexactly(5), 5) == b"first"  # attached and open
        r2, w2 = await asyncio.open_connection(LO, alloc.http_port)
        try:
            got = await asyncio.wait_for(r2.read(), 5)
        except ConnectionResetError:
            got = b""
        assert got == b"", "the second stream is closed at once"
        stats = server.carried()[node.identity.node_id]
        assert stats.streams == 1 and stats.streams_refused == 1
        w1.close()
        w2.close()
    finally:
        await node.stop()
        await server.close()


async def test_a_member_may_send_datagrams_only_to_the_addresses_the_relay_allows(http_server: int) -> None:
    member, stranger = udp_socket(), udp_socket()
    allowed = member.getsockname()
    server = RelayServer(LO, LO, ident.verify, destinations=lambda addr: addr == allowed, name="test-relay")
    await server.start()
    node = Node(server, http_server)
    loop = asyncio.get_running_loop()
    try:
        await node.start()
        assert node.client.send_datagram(b"to a member", allowed)
        assert node.client.send_datagram(b"to anyone", stranger.getsockname())
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(member, 2048), 5)
        assert data == b"to a member"
        for _ in range(50):
            if server.carried()[node.identity.node_id].dropped_destination:
                break
            await asyncio.sleep(0.02)
        stats = server.carried()[node.identity.node_id]
        assert stats.dropped_destination == 1 and stats.datagrams_out == 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recvfrom(stranger, 2048), 0.3)
    finally:
        member.close()
        stranger.close()
        await node.stop()
        await server.close()


async def test_a_port_range_holds_the_listener_and_every_allocation(http_server: int) -> None:
    from rmap2p.local_ports import free_port

    lo = free_port()
    hi = min(lo + 40, 65535)
    server = await relay(RelayLimits(port_range=(lo, hi)))
    node = Node(server, http_server)
    try:
        assert server.local_addr[1] == lo
        await node.start()
        alloc = node.client.allocation
        assert alloc is not None
        assert lo < alloc.gossip_port <= hi and lo < alloc.http_port <= hi and alloc.gossip_port != alloc.http_port
    finally:
        await node.stop()
        await server.close()
