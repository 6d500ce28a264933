"""The TCP forwarder: real sockets to real upstreams (echo servers, and redis-server through a failover)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.runners.resp import RespClient, RespError
from services.service_proxy import ServiceProxy
from services.stateful import Endpoint
from procs import pid_gone
from storage import StorageNode, require_binary, server_dir


async def echo_server(tag: bytes) -> tuple[asyncio.Server, Endpoint]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(tag + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])


async def roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return out


async def test_forwards_then_switches_and_drops_connections_to_the_old_target() -> None:
    one, at_one = await echo_server(b"1:")
    two, at_two = await echo_server(b"2:")
    proxy = ServiceProxy("svc", "127.0.0.1", 0, wait_for_primary=5)
    await proxy.start()
    try:
        assert proxy.port is not None
        # No primary yet: a connection waits for one instead of failing.
        early = asyncio.create_task(roundtrip(proxy.port, b"hello"))
        await asyncio.sleep(0.2)
        proxy.set_target(at_one)
        assert await early == b"1:hello"

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.read(100), 5) == b"1:x"
        proxy.set_target(at_two)
        # The connection to the old target is closed, not left talking to it.
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()
        assert await roundtrip(proxy.port, b"y") == b"2:y"
        big = bytes(range(256)) * 4096  # 1 MiB through the bounded pipes
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(big)
        await writer.drain()
        received = bytearray()
        deadline = time.monotonic() + 10
        while received.replace(b"2:", b"") != big:
            assert time.monotonic() < deadline, f"{len(received)} bytes back"
            received += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    finally:
        await proxy.stop()
        one.close()
        two.close()


async def test_connections_beyond_the_limit_are_refused() -> None:
    server, at = await echo_server(b"")
    proxy = ServiceProxy("svc", "127.0.0.1", 0, max_connections=2)
    await proxy.start()
    proxy.set_target(at)
    try:
        held = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
        for _, w in held:
            w.write(b"a")
        for r, _ in held:
            assert await asyncio.wait_for(r.read(10), 5) == b"a"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed at once
        writer.close()
        assert proxy.refused == 1
        for _, w in held:
            w.close()
        deadline = time.monotonic() + 5
        while proxy.connections:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await roundtrip(proxy.port, b"b") == b"b"
    finally:
        await proxy.stop()
        server.close()


async def test_redis_through_the_proxy_across_a_failover(tmp_path: Path) -> None:
    require_binary("redis-server", "redis-server")
    with server_dir() as data:
        await redis_failover_through_proxy(tmp_path, data)


async def redis_failover_through_proxy(tmp_path: Path, data: Path) -> None:
    a = StorageNode("redis", data / "a", tmp_path / "a.log")
    b = StorageNode("redis", data / "b", tmp_path / "b.log", role="replica", primary=a.address)
    proxy = ServiceProxy("redis", "127.0.0.1", 0)
    await proxy.start()
    try:
        b.wait_replication(lambda s: s["linked"])
        proxy.set_target(Endpoint("127.0.0.1", a.port))
        client = await RespClient.connect("127.0.0.1", proxy.port, a.password)  # type: ignore[arg-type]
        assert await client.command("SET", "k", "before") == "OK"
        assert await client.command("WAIT", "1", "2000") == 1
        a.kill()
        b.set_role("primary")
        proxy.set_target(Endpoint("127.0.0.1", b.port))
        try:
            await client.command("GET", "k")
            raise AssertionError("the old connection survived the switch")
        except (ConnectionError, RespError, OSError):
            pass
        await client.close()
        client = await RespClient.connect("127.0.0.1", proxy.port, b.password)  # type: ignore[arg-type]
        assert await client.command("GET", "k") == b"before"
        assert await client.command("SET", "k", "after") == "OK"
        await client.close()
    finally:
        await proxy.stop()
        a.stop()
        b.stop()


async def test_a_connection_to_a_dead_primary_is_held_until_the_view_names_a_new_one(tmp_path: Path) -> None:
    # The primary died and this node's view still names it: the connect is refused. The client's
    # write must wait for the new primary, not fail (nothing of it reached any copy yet).
    require_binary("redis-server", "redis-server")
    with server_dir() as data:
        a = StorageNode("redis", data / "a", tmp_path / "a.log")
        b = StorageNode("redis", data / "b", tmp_path / "b.log", role="replica", primary=a.address)
        reported: list[Endpoint] = []
        proxy = ServiceProxy("redis", "127.0.0.1", 0, wait_for_primary=10, on_unreachable=reported.append)
        await proxy.start()
        try:
            b.wait_replication(lambda s: s["linked"])
            at_a = Endpoint("127.0.0.1", a.port)
            proxy.set_target(at_a)
            a.kill()
            # Its server dies by the parent-death signal, a moment later: until then a connect would still
            # reach it and then break, which is not the case under test (a refused connect).
            assert pid_gone(a.server_pid), "redis-server outlived its node"

            async def write() -> object:
                client = await RespClient.connect("127.0.0.1", proxy.port, b.password, timeout=15)  # type: ignore[arg-type]
                try:
                    return await asyncio.wait_for(client.command("SET", "k", "during"), 15)
                finally:
                    await client.close()

            t0 = time.monotonic()
            pending = asyncio.create_task(write())
            await asyncio.sleep(1.5)  # detection and promotion take a while
            assert not pending.done(), "the connection was held, not closed"
            assert reported and reported[0] == at_a, "the refused connect is reported as evidence"
            b.set_role("primary")
            proxy.set_target(Endpoint("127.0.0.1", b.port))
            assert await pending == "OK"
            assert 1.5 <= time.monotonic() - t0 < 5
            assert proxy.held == 1
            client = await RespClient.connect("127.0.0.1", proxy.port, b.password)  # type: ignore[arg-type]
            assert await client.command("GET", "k") == b"during"
            await client.close()
        finally:
            await proxy.stop()
            a.stop()
            b.stop()


async def test_a_held_connection_retries_a_restarted_primary_and_gives_up_after_the_hold() -> None:
    server, at = await echo_server(b"1:")
    port = at.port
    server.close()
    await server.wait_closed()
    proxy = ServiceProxy("svc", "127.0.0.1", 0, wait_for_primary=3)
    await proxy.start()
    try:
        proxy.set_target(at)
        pending = asyncio.create_task(roundtrip(proxy.port, b"x"))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        # The same primary comes back on its port (a restart): the held connection reaches it.
        again = await asyncio.start_server(_tagged(b"1:"), "127.0.0.1", port)
        assert await asyncio.wait_for(pending, 5) == b"1:x"
        again.close()
        await again.wait_closed()
        t0 = time.monotonic()
        assert await roundtrip(proxy.port, b"y") == b""  # type: ignore[arg-type]
        assert 2.5 <= time.monotonic() - t0 < 4.5, "closed after the hold, not at once"
    finally:
        await proxy.stop()


def _tagged(tag: bytes):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(tag + data)
            await writer.drain()
        writer.close()

    return handle


async def test_proxies_hold_while_the_named_primary_still_reports_a_replica() -> None:
    # The view names b primary (its claim of epoch 2), but b's engine has not switched yet and
    # gossips role "replica": a write forwarded there would fail READONLY, so the proxy holds
    # new connections (no target) until b reports the switch.
    from dataclasses import replace

    from cluster import Cluster
    from pool_handles import MachineHandle

    from membership import ReplicationClaim, Status
    from services.stateful_manager import ServiceProxies

    cluster = Cluster(2, ids=["a", "b"])
    assert cluster.run_until(cluster.converged, 30.0)
    a, b = MachineHandle.of_cluster(cluster, 0), MachineHandle.of_cluster(cluster, 1)
    a.update_meta(lambda m: replace(m, http="127.0.0.1:1"))

    def claim(role: str) -> None:
        b.update_meta(lambda m: replace(
            m, http="127.0.0.1:2", services=(("redis", "healthy"),), service_ports=(("redis", 16379),),
            replication=(ReplicationClaim("redis", 2, True, role),),
        ))
        assert cluster.run_until(lambda: a.members() and next(x for x in a.members() if x.node == "b").meta.claim_of("redis") == ReplicationClaim("redis", 2, True, role), 30.0)

    proxies = ServiceProxies(a, {"redis": 0})
    proxies.proxies["redis"] = ServiceProxy("redis", "127.0.0.1", 0)
    claim("replica")
    proxies.retarget()
    assert proxies.proxies["redis"].target is None
    claim("primary")
    proxies.retarget()
    assert proxies.proxies["redis"].target == Endpoint("127.0.0.1", 16379)
    assert cluster.status(0, 1) is Status.ALIVE
