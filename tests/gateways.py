"""Real gateways in-process, one per node of a ``Cluster`` of real membership machines.

Each node's gateway (``services.gateway.add_routes``) serves on a loopback
port and sees its own machine through a ``MachineHandle``. ``advertise``
puts services a test started into a node's metadata and runs gossip until
every node knows: then any gateway forwards to them, as in a daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from cluster import Cluster
from pool_handles import MachineHandle

from membership import NodeMeta
from services import gateway as gw


@dataclass
class Gateways:
    cluster: Cluster
    handles: dict[str, MachineHandle]
    urls: dict[str, str]
    ports: dict[str, int]

    def advertise(self, node: str, services: Mapping[str, int], worker_type: str = "cpu") -> None:
        """``node`` runs ``services`` (name -> port on 127.0.0.1), healthy; returns once every node has heard."""
        meta = NodeMeta(
            name=node, worker_type=worker_type, http=f"127.0.0.1:{self.ports[node]}",
            services=tuple((s, "healthy") for s in services), service_ports=tuple(services.items()),
        )  # fmt: skip
        self.handles[node].update_meta(lambda m: meta)

        def heard() -> bool:
            return all(
                {m.node: m.meta for m in h.members()}[node].service_ports == meta.service_ports for h in self.handles.values()
            )

        assert self.cluster.run_until(heard, 30.0), f"{node}'s services reach every node by gossip"


@asynccontextmanager
async def gateways(ids: list[str]) -> AsyncIterator[Gateways]:
    cluster = Cluster(len(ids), ids=ids)
    assert cluster.run_until(cluster.converged, 30.0)
    handles = {name: MachineHandle.of_cluster(cluster, i) for i, name in enumerate(ids)}
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    try:
        for name in ids:
            app = web.Application()
            gw.add_routes(app, handles[name])
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports[name] = runner.addresses[0][1]
        pool = Gateways(cluster, handles, {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}, ports)
        for name in ids:
            pool.advertise(name, {})
        yield pool
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
