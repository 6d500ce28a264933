"""The service manager with real redis-servers on real membership machines: replicas, claims, hand-over health.

Two storage nodes (``tests.cluster.Cluster`` moves their gossip, each node's
manager runs the real redis runner in-process): the allocation puts redis
on one, the replica row on the other; the claims and engine roles are
gossiped; a replica reports ``healthy`` only while its claim holds the
primary's epoch. Then the primary's node dies and the replica is promoted
with the writes it acknowledged. Plus the pure parts: the admin endpoints
document and ``--service-proxy``'s argument.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from cluster import Cluster
from pool_handles import MachineHandle
from storage import require_binary, server_dir

from membership import Load, MemberView, NodeMeta, ReplicationClaim, Status
from rmap2p.cmd_join import proxy_ports
from services.manager import ServiceManager
from services.runners.resp import RespClient
from services.stateful_manager import add_endpoints, stateful_endpoints


def _probe(gpus: object = ()) -> dict[str, tuple[bool, str]]:
    return {"redis": (True, "redis-server"), **{s: (False, "not in this test") for s in ("chromadb", "postgres", "minio", "neo4j")}}


def _claims(handles: list[MachineHandle]) -> dict[str, tuple[ReplicationClaim | None, str | None]]:
    """node -> (its redis claim, its published redis health), as the first node's view has them."""
    out = {}
    for m in handles[0].members():
        if m.status.is_down:
            continue
        out[m.node] = (m.meta.claim_of("redis"), dict(m.meta.services).get("redis"))
    return out


def _check_handover_rule(handles: list[MachineHandle]) -> None:
    """A copy gossiped healthy holds the primary's epoch: a replica not yet streaming is not hand-over coverage.

    Checked while a live primary's claim is in the view (between its death and
    the promotion there is none, and the survivor's health is a round old).
    """
    seen = _claims(handles)
    primary_epochs = [c.epoch for c, _ in seen.values() if c is not None and c.primary]
    for node, (claim, health) in seen.items():
        if health == "healthy" and primary_epochs:
            assert claim is not None and claim.epoch == max(primary_epochs), (node, seen)


class CheckingHandle(MachineHandle):
    """A ``MachineHandle`` that records each ``check_alive`` request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checked: list[tuple[str, ...]] = []

    def check_alive(self, nodes: Iterable[str]) -> None:
        asked = tuple(sorted(nodes))
        self.checked.append(asked)
        super().check_alive(asked)


async def test_two_storage_managers_replicate_redis_and_the_replica_takes_over() -> None:
    require_binary("redis-server", "redis-server")
    with server_dir() as root:
        # c0, a third member without services, makes a majority matter: a promotion waits for one heard since.
        cluster = Cluster(3, ids=["s0", "s1", "c0"])
        assert cluster.run_until(cluster.converged, 30.0)
        handles: list[CheckingHandle] = []
        for i, name in enumerate(["s0", "s1"]):
            h = CheckingHandle.of_cluster(cluster, i)
            h.data_dir = root / name
            h.pool_secret = b"the pool's secret"
            h.update_meta(lambda m: replace(m, worker_type="storage", http="127.0.0.1:1"))
            handles.append(h)
        managers = [ServiceManager(h, ephemeral_ports=True, probe=_probe) for h in handles]
        for m in managers:
            await m.check_machine()

        async def rounds(pred: object, n: int, live: list[int]) -> None:
            for _ in range(n):
                for i in live:
                    await managers[i].reconcile()
                cluster.run_for(1.0)
                _check_handover_rule([handles[i] for i in live])
                if pred():  # type: ignore[operator]
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"not reached: {_claims([handles[i] for i in live])}")

        try:
            # s0 alone first: its copy is the primary of epoch 1.
            def s0_primary() -> bool:
                claim = handles[0].meta.claim_of("redis")
                return claim is not None and (claim.primary, claim.epoch) == (True, 1)

            await rounds(s0_primary, 40, [0])
            # With s0's server frozen, s1's copy runs (its engine answers) but cannot stream:
            # it must not be reported healthy, or a hand-over would count it as coverage.
            frozen = managers[0]._runners["redis"].supervisor.pid  # type: ignore[attr-defined]
            os.kill(frozen, signal.SIGSTOP)
            try:
                for _ in range(6):
                    await managers[1].reconcile()
                    cluster.run_for(1.0)
                    await asyncio.sleep(0.2)
                assert managers[1].running.get("redis") == "starting", managers[1].running
                claim = handles[1].meta.claim_of("redis")
                assert claim is not None and claim.epoch == 0 and claim.role == "replica"
            finally:
                os.kill(frozen, signal.SIGCONT)

            def replicated() -> bool:
                seen = _claims(handles)
                roles = sorted((c.role, c.primary, c.epoch, h) for c, h in seen.values() if c is not None)
                return roles == [("primary", True, 1, "healthy"), ("replica", False, 1, "healthy")]

            await rounds(replicated, 80, [0, 1])
            seen = _claims(handles)
            primary = next(n for n, (c, _) in seen.items() if c is not None and c.primary)
            p, r = (0, 1) if primary == "s0" else (1, 0)
            password = (root / "s0" / "services" / "redis" / "password").read_text().strip()
            assert password == (root / "s1" / "services" / "redis" / "password").read_text().strip()

            port = handles[p].meta.port_of("redis")
            assert port is not None
            client = await RespClient.connect("127.0.0.1", port, password)
            for i in range(200):
                await client.command("SET", f"k{i}", i)
            assert await client.command("WAIT", 1, 5000) == 1
            await client.close()

            # The primary's node dies: its server with it (stop_all), its member in the view.
            await managers[p].stop_all()
            cluster.crash(p)

            def promoted() -> bool:
                claim = handles[r].meta.claim_of("redis")
                return claim is not None and (claim.primary, claim.epoch, claim.role) == (True, 2, "primary")

            await rounds(promoted, 80, [r])
            # The promotion asked the live members at once rather than waiting for its probe schedule.
            assert ("c0",) in handles[r].checked, handles[r].checked
            port = handles[r].meta.port_of("redis")
            assert port is not None
            client = await RespClient.connect("127.0.0.1", port, password)
            assert await client.command("GET", "k199") == b"199"
            assert await client.command("SET", "after", "1") == "OK"
            await client.close()
        finally:
            for m in managers:
                await m.stop_all()


def _member(node: str, http: str, services: tuple[tuple[str, str], ...], ports: tuple[tuple[str, int], ...],
            claims: tuple[ReplicationClaim, ...], status: Status = Status.ALIVE) -> MemberView:
    meta = NodeMeta(name=node, worker_type="storage", http=http, services=services, service_ports=ports, replication=claims)
    return MemberView(node, status, 1, ("10.0.0." + node[-1], 7946), meta, Load(), None, None)


def test_the_admin_document_lists_each_copy_with_its_role_and_health() -> None:
    members = [
        _member("n1", "10.0.0.1:8080", (("redis", "healthy"), ("postgres", "starting")), (("redis", 40001), ("postgres", 40002)),
                (ReplicationClaim("redis", 2, True, "primary"), ReplicationClaim("postgres", 0, False, ""))),
        _member("n2", "0.0.0.0:8080", (("redis", "healthy"),), (("redis", 40003),), (ReplicationClaim("redis", 2, False, "replica"),)),
        _member("n3", "10.0.0.3:8080", (("redis", "healthy"),), (("redis", 40004),), (ReplicationClaim("redis", 1, True, "primary"),), Status.DEAD),
        _member("n4", "10.0.0.4:8080", (), (("redis", 40005),), ()),  # a port left over, the service stopped
    ]  # fmt: skip
    found = stateful_endpoints(members, "n1")
    assert found == {
        "redis": [
            {"node_id": "n1", "address": "10.0.0.1:40001", "role": "primary", "health": "healthy"},
            {"node_id": "n2", "address": "10.0.0.2:40003", "role": "replica", "health": "healthy"},
        ],
        "postgres": [{"node_id": "n1", "address": "10.0.0.1:40002", "role": "unknown", "health": "starting"}],
    }
    doc = {"services": [{"name": "redis"}, {"name": "chromadb"}, {"name": "postgres"}, {"name": "rag-embeddings"}]}
    add_endpoints(doc, members + [_member("n5", "10.0.0.5:8080", (("chromadb", "healthy"),), (("chromadb", 40006),), ())], "n1")
    assert [s.get("endpoints") is not None for s in doc["services"]] == [True, True, True, False]
    # ChromaDB has no replication: its one copy is the one that takes writes.
    assert doc["services"][1]["endpoints"] == [{"node_id": "n5", "address": "10.0.0.5:40006", "role": "primary", "health": "healthy"}]


def test_service_proxy_argument() -> None:
    assert proxy_ports(None) == ()
    assert proxy_ports([]) == (("postgres", 5432), ("redis", 6379))
    assert proxy_ports(["redis=16379"]) == (("postgres", 5432), ("redis", 16379))
    for bad in (["chromadb=8000"], ["redis"], ["redis=0"], ["redis=http"], ["redis=70000"]):
        with pytest.raises(ValueError, match="--service-proxy"):
            proxy_ports(bad)
