"""View -> primary_of -> ReplicaDriver -> real redis-server: bootstrap, failover, the old primary's return.

Two in-process "nodes" (a runner and a driver each, separate data dirs on
loopback). The view is what they would gossip: each node's claim and
whether it is alive. This is the chain the manager will run per view change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.replicas import Copy, primary_of
from allocator.view import NodeView
from services.replication import Claim, ReplicaDriver, load_claim
from services.replication import converge as step
from services.replication import endpoints
from services.runners.resp import RespClient, RespError
from services.runners.stateful import make_stateful_runner, service_dir
from services.stateful import Endpoint
from services.supervisor import RestartPolicy
from storage import require_binary, server_dir

POLICY = RestartPolicy(check_interval=0.2, backoff_initial=0.5, backoff_max=2.0)
S = "redis"


class Node:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.alive = True
        self.runner = make_stateful_runner(S, root / name, "127.0.0.1", 0, name, b"pool", policy=POLICY)
        self.driver = ReplicaDriver(S, name, self.runner, service_dir(root / name, S))
        self.started = False

    def copy(self) -> Copy:
        return Copy(self.name, alive=self.alive, runs=self.alive, epoch=self.driver.claim.epoch, primary=self.driver.claim.primary)


async def converge(nodes: list[Node], rounds: int = 100) -> str | None:
    """Run ``services.replication.converge`` on every node over the shared view until claims settle."""
    import asyncio

    for _ in range(rounds):
        view = [NodeView(n.name, "storage", services=(S,) if n.started else (), status="alive" if n.alive else "dead") for n in nodes]
        claims = {n.name: (n.driver.claim.epoch, n.driver.claim.primary) for n in nodes}
        endpoints = {n.name: n.runner.endpoint for n in nodes if n.alive and n.runner.endpoint}
        changed = False
        for n in nodes:
            if not n.alive:
                continue
            before = n.driver.claim
            await step(n.driver, S, view, claims, endpoints)  # type: ignore[arg-type]
            changed |= n.driver.claim != before
            if not n.started:
                await n.runner.start()
                n.started = True
                changed = True
        if not changed:
            roles = primary_of(S, [n.copy() for n in nodes])
            replicas_linked = all(n.driver.claim.epoch == roles.epoch for n in nodes if n.alive)
            if replicas_linked:
                return roles.primary
        await asyncio.sleep(0.1)
    raise AssertionError(f"no convergence: {[n.copy() for n in nodes]}")


async def test_view_driven_failover_and_rejoin() -> None:
    require_binary("redis-server", "redis-server")
    with server_dir() as root:
        await failover_and_rejoin(root)


async def failover_and_rejoin(tmp_path: Path) -> None:
    nodes = [Node("a", tmp_path), Node("b", tmp_path)]
    try:
        first = await converge(nodes)
        primary = next(n for n in nodes if n.name == first)
        other = next(n for n in nodes if n.name != first)
        assert primary.driver.claim.primary and primary.driver.claim.epoch == 1
        assert other.runner.role == "replica" and other.driver.claim.epoch == 1

        client = await RespClient.connect("127.0.0.1", primary.runner.port, primary.runner.password)  # type: ignore[arg-type, attr-defined]
        for i in range(100):
            await client.command("SET", f"k{i}", i)
        assert await client.command("WAIT", "1", "2000") == 1
        await client.close()

        # The primary's node dies.
        await primary.runner.stop()
        primary.alive = False
        assert await converge(nodes) == other.name
        assert other.driver.claim.epoch == 2 and other.runner.role == "primary"
        client = await RespClient.connect("127.0.0.1", other.runner.port, other.runner.password)  # type: ignore[arg-type, attr-defined]
        assert await client.command("GET", "k99") == b"99"
        assert await client.command("SET", "after", "1") == "OK"
        await client.close()

        # It comes back with its old claim from disk, and follows the new primary.
        assert load_claim(service_dir(tmp_path / primary.name, S)).primary
        back = Node(primary.name, tmp_path)
        nodes = [back, other]
        assert back.driver.claim.epoch == 1 and back.driver.claim.primary
        assert await converge(nodes) == other.name
        assert back.runner.role == "replica" and back.driver.claim.epoch == 2 and not back.driver.claim.primary
        client = await RespClient.connect("127.0.0.1", back.runner.port, back.runner.password)  # type: ignore[arg-type, attr-defined]
        with pytest.raises(RespError, match="READONLY"):
            await client.command("SET", "split", "brain")
        assert await client.command("GET", "after") == b"1"
        await client.close()
    finally:
        for n in nodes:
            await n.runner.stop()


def test_endpoints_from_gossiped_metadata() -> None:
    from membership import Load, MemberView, NodeMeta, Status

    def member(node: str, http: str, ports: tuple[tuple[str, int], ...], status: Status = Status.ALIVE) -> MemberView:
        meta = NodeMeta(name=node, worker_type="storage", http=http, service_ports=ports)
        return MemberView(node, status, 1, ("10.0.0." + node[-1], 7946), meta, Load(), None, None)

    members = [
        member("n1", "0.0.0.0:8080", (("redis", 6379),)),
        member("n2", "192.168.1.2:8080", (("redis", 16379), ("postgres", 5432))),
        member("n3", "192.168.1.3:8080", (("redis", 6379),), Status.DEAD),
        member("n4", "192.168.1.4:8080", ()),
    ]
    assert endpoints(S, members, me="n9") == {"n1": Endpoint("10.0.0.1", 6379), "n2": Endpoint("192.168.1.2", 16379)}
    assert endpoints(S, members, me="n1")["n1"] == Endpoint("127.0.0.1", 6379)


async def test_a_replica_chosen_as_primary_is_promoted_only_once_a_majority_answers() -> None:
    """A replica cut off alone sees its primary dead while a third member still looks alive; promoting on that
    view would claim an epoch that wins over the real primary's writes at the heal."""
    require_binary("redis-server", "redis-server")
    with server_dir() as root:
        nodes = [Node("a", root), Node("b", root)]
        try:
            first = await converge(nodes)
            primary = next(n for n in nodes if n.name == first)
            other = next(n for n in nodes if n.name != first)
            primary.alive = False  # as the replica's view has it; the primary itself runs on
            view = [NodeView(n.name, "storage", services=(S,) if n.alive else (), status="alive" if n.alive else "dead") for n in nodes]
            claims = {n.name: (n.driver.claim.epoch, n.driver.claim.primary) for n in nodes}
            where = {n.name: n.runner.endpoint for n in nodes if n.runner.endpoint}
            asked: list[float] = []

            def nobody(since: float) -> bool:
                asked.append(since)
                return False

            for now in (10.0, 11.0):
                roles = await step(other.driver, S, view, claims, where, now=now, heard_since=nobody)  # type: ignore[arg-type]
                assert roles.primary == other.name and roles.promoted
            assert other.runner.role == "replica" and other.driver.claim == Claim(1, False), "promoted without a fresh majority"
            assert other.driver.waits_for_majority and asked == [10.0, 10.0]

            await step(other.driver, S, view, claims, where, now=12.0, heard_since=lambda since: since == 10.0)  # type: ignore[arg-type]
            assert other.runner.role == "primary" and other.driver.claim == Claim(2, True)
            assert not other.driver.waits_for_majority
        finally:
            for n in nodes:
                await n.runner.stop()
