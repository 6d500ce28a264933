"""The service manager's stateful part: copies with data, their roles, their claims, the local proxies.

``ServiceManager`` delegates every replicated service (``allocator.replicas.REPLICATED``:
redis, postgres) to ``StatefulServices``:

- where copies run: ``allocator.replicas.replicated_actions`` (the
  allocation places a service once, on its primary; a replica goes to a
  second capable node of its type);
- a copy's runner (``services.runners.stateful``) gets a ``ReplicaDriver``
  and is started only in a role the view gives it: as the primary, or as the
  replica of a primary whose address is known. A copy with no data is never
  started writable while a copy with data exists (``primary_of`` then
  names no primary and the start waits);
- every reconcile runs ``services.replication.converge`` per service and
  gossips the claims (``NodeMeta.replication``) with the engine's role;
- a copy is reported ``healthy`` (which the hand-over plan reads as "another
  node serves it") only while its claim holds the primary's epoch, that is a
  replica that streams from the current primary, or the primary itself.

Graceful leave (``hand_over``, awaited by the daemon before it announces
its leave): for each service this node is primary of, with a replica in
the view, the copy stops taking writes and waits (bounded) until the
replica has every write (``quiesce``: Redis ``CLIENT PAUSE WRITE`` and the
replica's acknowledged offset; PostgreSQL's standby flush position, and
its fast shutdown ships the rest of the WAL before it exits); the node then
gives the role away in one metadata change (the service no longer runs
here, the claim no longer says primary) and waits until another node
claims the primary of a newer epoch. The replica is promoted by the usual
rule (``primary_of``, rule 2), so the writable gap is gossip plus one
promotion instead of a failure detection. A primary without a replica just
stops with the node; its data stays in the data dir.

``ServiceProxies`` is apart: ``join --service-proxy`` forwards a local port
per replicated service to its current primary on any node, storage or not,
with or without services of its own.

Pool secret: the storage passwords derive from ``PoolHandle.pool_secret``
(the keyring's, see ``rmap2p.pool_handle``). Without one (an open pool) each
node draws its own password, so a replica cannot authenticate to a primary on
another node until the operator copies ``<data dir>/services/<name>/password``
from one node to the others; the node logs this once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from allocator.actions import NodeActions
from allocator.members import to_node_views
from allocator.replicas import (
    REPLICATED,
    Claims,
    Roles,
    copies,
    has_quorum,
    primary_of,
    replicated_actions,
)
from allocator.view import NodeView
from membership import MemberEvent, MemberView, ReplicationClaim, Status
from services.handle import PoolHandle
from services.replication import ReplicaDriver, converge, endpoints
from services.runners.stateful import SINGLE_COPY, is_stateful, make_stateful_runner, service_dir
from services.service_proxy import ServiceProxy
from services.stateful import Endpoint, StatefulRunner

log = logging.getLogger(__name__)

SYNCHRONOUS_ENV = "RMAP2P_POSTGRES_SYNCHRONOUS"
"""``1``: PostgreSQL's primary commits only once its standby has the WAL (while it has one)."""
HANDOVER_CATCH_UP = 5.0
"""Seconds a leaving primary waits for its replica to hold every write before it stops anyway."""
HANDOVER_PROMOTION = 10.0
"""Seconds a leaving primary waits to see its successor claim the role (then it leaves regardless)."""
FENCING_ENV = "RMAP2P_STORAGE_FENCING"
"""``0``: no fencing (a primary keeps taking writes on a side of the pool without a majority)."""
PROXY_RECHECK = 1.0
"""Seconds between proxy retargets when no membership event comes (claims change by gossip too)."""


def view_claims(members: Iterable[MemberView], services: Iterable[str] = REPLICATED) -> dict[str, dict[str, tuple[int, bool]]]:
    """service -> node id -> (epoch, primary) from every member's gossiped metadata (dead ones included)."""
    wanted = set(services)
    out: dict[str, dict[str, tuple[int, bool]]] = {s: {} for s in wanted}
    for m in members:
        for c in m.meta.replication:
            if c.service in wanted:
                out[c.service][m.node] = (c.epoch, c.primary)
    return out


def stateful_endpoints(
    members: Sequence[MemberView], me: str, services: Iterable[str] = REPLICATED, own_host: str | None = None
) -> dict[str, list[dict[str, str]]]:
    """Each replicated service's copies for ``/api/admin/services``: node, address, role, health.

    ``address`` is host:port as this node reaches the copy; ``role`` is what
    the copy's engine reports (gossiped), ``unknown`` before it has said.
    """
    out = {}
    for service in services:
        rows = []
        for node, endpoint in sorted(endpoints(service, members, me, own_host).items()):
            meta = next(m.meta for m in members if m.node == node)
            claim = meta.claim_of(service)
            health = dict(meta.services).get(service)
            if health is None:
                continue  # a port without the service running: it stopped since
            # A copy of an engine without replication (chromadb, minio, neo4j) is the one that takes writes.
            role = "primary" if service in SINGLE_COPY else (claim.role if claim else "") or "unknown"
            rows.append({"node_id": node, "address": str(endpoint), "role": role, "health": health})
        out[service] = rows
    return out


def add_endpoints(doc: dict[str, object], members: Sequence[MemberView], me: str, own_host: str | None = None) -> None:
    """Put ``endpoints`` (``stateful_endpoints``) on each stateful service of a ``services_doc`` document.

    Replicated ones list primary and replica; a single-copy one (chromadb) its
    copy, role ``primary``: clients such as a RAG application find ChromaDB there.
    """
    found = stateful_endpoints(members, me, (*REPLICATED, *SINGLE_COPY), own_host=own_host)
    for entry in doc.get("services", []):  # type: ignore[union-attr]
        if isinstance(entry, dict) and entry.get("name") in found:
            entry["endpoints"] = found[entry["name"]]


def handover_source(service: str, members: Sequence[MemberView], me: str) -> Endpoint | None:
    """Where another up node's healthy copy of ``service`` listens (lowest node id), or None. Pure.

    A new copy of a service without replication (``HANDED_OVER``) takes
    this copy's data before it starts; the old copy is stopped once the new
    one is healthy (make-before-break), so during a planned move it is there.
    """
    where = endpoints(service, members, me)
    for m in sorted(members, key=lambda m: m.node):
        if m.node != me and m.node in where and dict(m.meta.services).get(service) == "healthy":
            return where[m.node]
    return None


def _successor(service: str, members: Sequence[MemberView], me: str, epoch: int) -> str | None:
    """Another up member whose copy of ``service`` claims the primary of an epoch after ``epoch``, as its engine says."""
    for m in members:
        if m.node == me or m.status.is_down:
            continue
        claim = m.meta.claim_of(service)
        if claim is not None and claim.primary and claim.epoch > epoch and claim.role == "primary":
            return m.node
    return None


class StatefulServices:
    """Runners, drivers and claims of this node's copies of replicated services."""

    def __init__(self, node: PoolHandle, *, ephemeral_ports: bool, synchronous: bool = False, fencing: bool = True) -> None:
        self.node = node
        self._fencing = fencing
        self._ephemeral = ephemeral_ports
        self._synchronous = synchronous
        self._drivers: dict[str, ReplicaDriver] = {}
        self._roles: dict[str, Roles] = {}
        self._engine_role: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._warned = False

    @staticmethod
    def handles(service: str) -> bool:
        return service in REPLICATED and is_stateful(service)

    def claims(self) -> Claims:
        return view_claims(self.node.members())

    def decide(self, running: Iterable[str]) -> NodeActions:
        return replicated_actions(self.node.node_id, to_node_views(self.node.members()), running, self.claims())

    def make_runner(self, service: str, port: int, on_failed: object) -> StatefulRunner:
        data_dir = self.node.data_dir
        assert data_dir is not None, "stateful services need a data dir (the manager checks)"
        if self.node.pool_secret is None and not self._warned:
            self._warned = True
            log.warning(
                "node %s: no pool secret (no keyring): storage passwords are drawn per node; "
                "replicas on other nodes authenticate only once the password files match", self.node.node_id,
            )  # fmt: skip
        return make_stateful_runner(
            service, data_dir, self.node.service_host, 0 if self._ephemeral else port, self.node.node_id,
            self.node.pool_secret, on_failed=on_failed, synchronous=self._synchronous,  # type: ignore[arg-type]
        )  # fmt: skip

    async def before_start(self, service: str, runner: StatefulRunner) -> bool:
        """Give the copy its role before it starts; False when it must not start yet."""
        data_dir = self.node.data_dir
        assert data_dir is not None
        driver = self._drivers.get(service)
        if driver is None or driver.runner is not runner:
            driver = ReplicaDriver(service, self.node.node_id, runner, service_dir(data_dir, service), synchronous=self._synchronous)
        roles = await self._converge(service, driver)
        me = self.node.node_id
        if roles.primary == me and not self._quorum():
            why = "it would be primary, but this side of the pool has no majority (fencing)"
        elif roles.primary == me or (roles.primary is not None and driver.following is not None):
            self._drivers[service] = driver
            self._waiting.pop(service, None)
            return True
        else:
            why = "no copy with data is alive" if roles.primary is None else f"the address of its primary {roles.primary} is not known yet"
        if self._waiting.get(service) != why:  # once per reason, not every reconcile
            self._waiting[service] = why
            log.info("node %s: %s waits to start: %s", me, service, why)
        return False

    def forget(self, service: str) -> None:
        self._drivers.pop(service, None)
        self._roles.pop(service, None)
        self._engine_role.pop(service, None)

    async def step(self) -> bool:
        """One converge per running copy (roles, claims); True when a claim changed."""
        changed = False
        for service, driver in list(self._drivers.items()):
            before = driver.claim
            try:
                await self._converge(service, driver)
                if driver.runner.port is not None:
                    self._engine_role[service] = (await driver.runner.replication()).role
            except Exception as exc:  # noqa: BLE001 - one engine's trouble must not stop the manager's loop
                log.warning("node %s: %s: replication step failed: %s", self.node.node_id, service, exc)
                self._engine_role[service] = ""
            changed |= driver.claim != before
        return changed

    async def _converge(self, service: str, driver: ReplicaDriver) -> Roles:
        members = self.node.members()
        views = to_node_views(members)
        where = endpoints(service, members, self.node.node_id, self.node.service_host)
        runner_ep = driver.runner.endpoint
        if runner_ep is not None:
            where[self.node.node_id] = runner_ep
        claims = view_claims(members, (service,))[service]
        me = self.node.node_id

        def heard_since(since: float) -> bool:
            fresh = {m.node for m in self.node.members() if m.last_seen is not None and m.last_seen >= since}
            return has_quorum(views, fresh | {me})

        roles = await converge(
            driver, service, views, claims, where, quorum=self._quorum(views), now=self.node.now(),
            heard_since=heard_since if self._fencing else None,
        )  # fmt: skip
        if driver.waits_for_majority:
            self.node.check_alive(m.node for m in members if m.node != me and m.status is Status.ALIVE)
        self._roles[service] = roles
        return roles

    def _quorum(self, views: Sequence[NodeView] | None = None) -> bool:
        """Whether this node's side of the pool may run a writable primary (``has_quorum``; always, without fencing)."""
        if not self._fencing:
            return True
        return has_quorum(views if views is not None else to_node_views(self.node.members()))

    def health(self, service: str, engine_health: str) -> str:
        """``engine_health``, held at ``starting`` while the copy does not hold the primary's history."""
        driver, roles = self._drivers.get(service), self._roles.get(service)
        if driver is None or roles is None or engine_health != "healthy":
            return engine_health
        return engine_health if roles.primary is not None and driver.claim.epoch == roles.epoch else "starting"

    def waiting(self) -> bool:
        """Whether a copy here waits for a majority to answer (a promotion, or dropping synchronous commit)."""
        return any(d.waits_for_majority for d in self._drivers.values())

    def holds_primary(self) -> bool:
        """Whether a copy here claims a primary role (something a leave should hand over)."""
        return any(d.claim.primary for d in self._drivers.values())

    async def hand_over(self, running: Mapping[str, object], stop: Callable[[str], Awaitable[None]]) -> None:
        """Hand each primary role this node holds to a replica before the node leaves (module docstring).

        ``running``: the manager's runners by service; ``stop(service)``
        stops one and publishes the metadata without it (the claim is kept,
        no longer primary). All services are handed over at once.
        """
        me = self.node.node_id
        jobs, names = [], []
        for service, driver in sorted(self._drivers.items()):
            roles = self._roles.get(service)
            if service not in running or roles is None or roles.primary != me or not driver.claim.primary:
                continue
            if not roles.replicas:
                log.info("node %s: %s has no replica to hand over to: it stops with the node (its data stays here)", me, service)
                continue
            jobs.append(self._hand_over_one(service, driver, roles, stop))
            names.append(service)
        for service, outcome in zip(names, await asyncio.gather(*jobs, return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):
                log.warning("node %s: hand-over of %s failed: %s", me, service, outcome)

    async def _hand_over_one(self, service: str, driver: ReplicaDriver, roles: Roles, stop: Callable[[str], Awaitable[None]]) -> None:
        me = self.node.node_id
        loop = asyncio.get_running_loop()
        began = loop.time()
        log.info("node %s: leaving: handing %s (primary at epoch %d) over to a replica of %s", me, service, driver.claim.epoch, ", ".join(roles.replicas))
        caught_up = False
        quiesce = getattr(driver.runner, "quiesce", None)
        if quiesce is not None:
            try:
                caught_up = await quiesce(HANDOVER_CATCH_UP)
            except Exception as exc:  # noqa: BLE001 - the hand-over goes on: the replica has what it has
                log.warning("node %s: %s: cannot stop writes before the hand-over: %s", me, service, exc)
        epoch = driver.claim.epoch
        driver.abdicate()
        await stop(service)
        stopped = loop.time() - began
        successor = None
        while loop.time() - began < HANDOVER_CATCH_UP + HANDOVER_PROMOTION:
            successor = _successor(service, self.node.members(), me, epoch)
            if successor is not None:
                break
            await asyncio.sleep(0.05)
        if successor is None:
            log.warning(
                "node %s: %s stopped %.2f s into the hand-over (replica caught up: %s), but no successor claimed it "
                "within %.0f s: the replica is promoted when the pool sees this node gone",
                me, service, stopped, "yes" if caught_up else "no", HANDOVER_PROMOTION,
            )  # fmt: skip
            return
        log.info(
            "node %s: %s handed over to %s in %.2f s (writes stopped, replica caught up: %s; copy stopped after %.2f s)",
            me, service, successor, loop.time() - began, "yes" if caught_up else "no", stopped,
        )  # fmt: skip

    def gossip(self) -> tuple[ReplicationClaim, ...]:
        """The claims to put in this node's metadata: one per copy with data or running here."""
        out = []
        for service, driver in sorted(self._drivers.items()):
            out.append(ReplicationClaim(service, driver.claim.epoch, driver.claim.primary, self._engine_role.get(service, "")))
        return tuple(out)


def _engine_is_replica(members: Sequence[MemberView], node: str, service: str) -> bool:
    """Whether ``node`` gossips that its engine of ``service`` runs as a replica now."""
    for m in members:
        if m.node == node:
            claim = m.meta.claim_of(service)
            return claim is not None and claim.role == "replica"
    return False


class ServiceProxies:
    """``join --service-proxy``: one ``ServiceProxy`` per replicated service, retargeted from the view."""

    def __init__(self, node: PoolHandle, ports: Mapping[str, int], host: str = "127.0.0.1") -> None:
        self.node = node
        self._ports = dict(sorted(ports.items()))
        self._host = host
        self.proxies: dict[str, ServiceProxy] = {}
        self._wake = asyncio.Event()
        self._node_at: dict[Endpoint, str] = {}  # where each primary the proxies point at listens -> its node

    async def run(self) -> None:
        await self.node.wait_settled()  # the node has its id and a first view
        for service, port in self._ports.items():
            proxy = ServiceProxy(service, self._host, port, node_id=self.node.node_id, on_unreachable=self._unreachable)
            try:
                await proxy.start()
            except OSError as exc:
                log.error("node %s: no %s proxy: cannot listen on %s:%d: %s", self.node.node_id, service, self._host, port, exc.strerror or exc)
                continue
            self.proxies[service] = proxy
        try:
            self.node.on_view_change(self._on_events)
            while True:
                self.retarget()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), PROXY_RECHECK)
                self._wake.clear()
        finally:
            for proxy in self.proxies.values():
                await proxy.stop()

    def _on_events(self, events: Sequence[MemberEvent]) -> None:
        self._wake.set()

    def _unreachable(self, where: Endpoint) -> None:
        # A proxy could not connect to a primary: membership probes that node now (evidence only).
        node = self._node_at.get(where)
        if node is not None and node != self.node.node_id:
            self.node.probe_soon(node)

    def retarget(self) -> None:
        """Point each proxy at its service's primary as the view names it (None: hold new connections)."""
        members = self.node.members()
        views = to_node_views(members)
        claims = view_claims(members, self.proxies)
        node_at: dict[Endpoint, str] = {}
        for service, proxy in self.proxies.items():
            roles = primary_of(service, copies(service, views, claims[service]))
            where = endpoints(service, members, self.node.node_id, self.node.service_host)
            target = where.get(roles.primary) if roles.primary is not None else None
            if target is not None and roles.primary is not None and _engine_is_replica(members, roles.primary, service):
                # The view names it primary but its engine still says replica (a promotion under
                # way, or an old primary back as a replica): a write there fails READONLY, so new
                # connections wait for the engine to report the switch instead.
                target = None
            if target is not None and roles.primary is not None:
                node_at[target] = roles.primary
            proxy.set_target(target)
        self._node_at = node_at
