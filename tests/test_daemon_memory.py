"""Real ``Node`` daemons in one process, their gossip datagrams on a ``MemoryNetwork``.

The daemon's pump, join loop and sealing run as in production; only the
datagram transport is the in-memory twin (``transport_factory``). Push-pull
anti-entropy still uses real TCP streams on loopback, on the same port number
as each node's in-memory endpoint (the join goes through it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from membership import SwimConfig
from p2p.keyring import Keyring, save_keyring
from p2p.transport import DatagramTransport, MemoryNetwork, udp_aad
from rmap2p.daemon import Node, NodeConfig

LOOPBACK = "127.0.0.1"
KEY = bytes(range(32))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def memory_factory(net: MemoryNetwork) -> Callable[[str, int, int], asyncio.Future[DatagramTransport]]:
    async def factory(host: str, port: int, max_size: int) -> DatagramTransport:
        return net.transport((host, port))

    return factory  # type: ignore[return-value]


def config(tmp_path: Path, name: str, join: tuple[tuple[str, int], ...] = (), **kw: object) -> NodeConfig:
    # No reachability checks unless a test asks: an edge's probe datagram cannot reach a
    # MemoryNetwork endpoint, so every such node would be judged unreachable.
    kw.setdefault("reach_interval", 0.0)
    return NodeConfig(
        bind=(LOOPBACK, free_tcp_port()),
        http=(LOOPBACK, 0),
        join=join,
        name=name,
        data_dir=tmp_path / name,
        mdns=False,
        services=False,
        bootstrap_file=str(tmp_path / "no-bootstrap-file"),
        swim=SwimConfig.local(),
        rejoin_interval=0.5,
        recontact_interval=2.0,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(nodes: list[Node]) -> AsyncIterator[list[Node]]:
    tasks = [asyncio.create_task(n.run(), name=n.config.name) for n in nodes]
    try:
        await asyncio.wait_for(asyncio.gather(*(n.ready.wait() for n in nodes)), 10)
        yield nodes
    finally:
        for n in nodes:
            n.stop("test over")
        done, pending = await asyncio.wait(tasks, timeout=10)
        assert not pending, "nodes did not stop"
        for t in done:
            t.result()  # a node that crashed fails the test here


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


def alive_names(node: Node) -> set[str]:
    return {m.meta.name for m in node.members() if m.status.label == "alive"}


async def test_three_nodes_join_over_a_memory_network(tmp_path: Path) -> None:
    net = MemoryNetwork()
    first = config(tmp_path, "a")
    cfgs = [first, config(tmp_path, "b", join=(first.bind,)), config(tmp_path, "c", join=(first.bind,))]
    nodes = [Node(c, transport_factory=memory_factory(net)) for c in cfgs]
    async with running(nodes):
        await until(lambda: all(alive_names(n) == {"a", "b", "c"} for n in nodes), 20, "three nodes to see each other")
        # Push-pull may introduce them before the first probe: wait for datagrams both ways.
        await until(lambda: all(n.udp_stats()["received"] and n.udp_stats()["sent"] for n in nodes), 10, "probes")
        for n in nodes:
            # The datagrams went through the in-memory network: the UDP port is free on the host.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(n.config.bind)
        # Gossip addresses are the memory endpoints, and each node advertises its HTTP port in its metadata.
        assert {m.addr for m in nodes[0].members()} == {c.bind for c in cfgs}


async def test_datagrams_are_bound_to_the_cluster_name(tmp_path: Path) -> None:
    """Two pools that share one key do not mix: the cluster name is in the UDP associated data."""
    key_file = tmp_path / "pool.keys"
    save_keyring(key_file, Keyring.single(KEY))
    captured: list[tuple[bytes, tuple[str, int]]] = []

    def record(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        captured.append((data, dst))
        return False

    net = MemoryNetwork(loss=record)
    first = config(tmp_path, "a", key_file=key_file, cluster="pool")
    cfgs = [first, config(tmp_path, "b", join=(first.bind,), key_file=key_file, cluster="pool")]
    nodes = [Node(c, transport_factory=memory_factory(net)) for c in cfgs]
    async with running(nodes):
        await until(lambda: all(alive_names(n) == {"a", "b"} for n in nodes), 20, "two keyed nodes to join")
        await until(lambda: any(a == cfgs[1].bind for _, a in captured), 10, "a datagram to b")
        ring = Keyring.single(KEY)
        sealed, dst = next((d, a) for d, a in captured if a == cfgs[1].bind)
        plain = ring.open(sealed, udp_aad("pool"))
        target = nodes[1]
        stats = target.udp_stats
        intruder = net.transport((LOOPBACK, 0))
        before = stats()["dropped_unauthenticated"]
        # The same message sealed with the same key for another cluster name is refused...
        await intruder.send(ring.seal(plain, udp_aad("other-pool")), dst)
        await until(lambda: stats()["dropped_unauthenticated"] == before + 1, 5, "the foreign datagram to be dropped")
        # ...while sealed for this cluster it opens: the intake is in order, so once a second
        # foreign datagram sent after it is dropped, this one has been taken, not dropped.
        await intruder.send(ring.seal(plain, udp_aad("pool")), dst)
        await intruder.send(ring.seal(plain, udp_aad("other-pool")), dst)
        await until(lambda: stats()["dropped_unauthenticated"] >= before + 2, 5, "the second foreign datagram")
        assert stats()["dropped_unauthenticated"] == before + 2


async def test_a_pool_with_another_cluster_name_and_the_same_key_is_not_joined(tmp_path: Path) -> None:
    key_file = tmp_path / "pool.keys"
    save_keyring(key_file, Keyring.single(KEY))
    net = MemoryNetwork()
    first = config(tmp_path, "a", key_file=key_file, cluster="pool")
    stranger = config(tmp_path, "x", join=(first.bind,), key_file=key_file, cluster="other-pool")
    nodes = [Node(first, transport_factory=memory_factory(net)), Node(stranger, transport_factory=memory_factory(net))]
    async with running(nodes):
        await asyncio.wait_for(nodes[1].settled.wait(), 10)
        await asyncio.sleep(1.0)
        assert alive_names(nodes[0]) == {"a"}
        assert alive_names(nodes[1]) == {"x"}
        assert nodes[0].tcp_stats()["dropped_unauthenticated"] >= 1
