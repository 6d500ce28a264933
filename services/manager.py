"""Reconciliation: run exactly this node's row of the allocation, make-before-break.

On every batch of membership events (debounced) and every few seconds, the
manager asks ``allocator.actions.node_actions`` what this node should do on
its own view (the same call the simulator makes): it starts what its row
gains and stops what it loses once another node serves it healthy, checks the
health of what runs, and gossips the result in the node's metadata (services
with their health, their ports, loaded models, how far a loading model got
(``services.load_progress``), capabilities). It never tells
another node what to do. It sees the node only through a ``PoolHandle``.

Warm standbys (``allocator.standby``): for a model service whose one runner
is on another node, the node the allocation would hand it to if that runner
died starts its own runner beforehand, unadvertised, so that when the death
comes the service is served again as soon as it is detected, not a model
load later. Which services get one: ``RMAP2P_WARM_STANDBY`` (default
``rag-embeddings,ner-extraction``, the models small enough to keep twice;
``none`` turns it off); never in echo mode.

Before a graceful leave the daemon awaits ``hand_over``: reconciliation
stops, and each replicated service this node is primary of is handed to a
replica (``StatefulServices.hand_over``) while the node is still a member,
so the pool is not left without a writable primary until failure detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from allocator.actions import NodeActions, node_actions
from allocator.allocate import allocation_input
from allocator.catalog import ServiceSpec, by_name
from allocator.members import capabilities, to_node_views
from allocator.replicas import REPLICATED
from allocator.standby import standby_for
from membership import MemberEvent, NodeMeta
from p2p.discovery import format_host_port
from services.capabilities import probe as probe_machine
from services.capabilities import service_names, withheld
from services.engine_choice import Gpu
from services.handle import PoolHandle
from services.load_progress import gossip_percent
from services.routing import connect_host, split_host_port
from services.runner import PlaceholderRunner, Runner, RunnerError
from services.runners import has_runner, make_runner
from services.runners.container_life import remove_leftovers
from services.runners.stateful import SINGLE_COPY, make_single_copy_runner
from services.stateful_manager import (
    FENCING_ENV,
    SYNCHRONOUS_ENV,
    StatefulServices,
    handover_source,
)
from services.storage_probe import probe_storage

log = logging.getLogger(__name__)

DEBOUNCE = 0.3
"""Seconds to let a burst of membership events settle before recomputing."""
RECHECK = 2.0
"""Seconds between reconciliations when nothing happens (health, hand-overs)."""
RECHECK_WAITING = 0.25
"""Seconds between reconciliations while a promotion or a primary's commits wait on a fresh majority
(``StatefulServices.waiting``): the answers come as probe acks, which raise no view change."""
STANDBY_SETTLE = 2.0
"""Seconds a warm standby must stay wanted before it is started: a view still settling
(a join, a restart) would otherwise load a model only to drop it a moment later."""

STANDBY_ENV = "RMAP2P_WARM_STANDBY"
STANDBY_DEFAULT = ("rag-embeddings", "ner-extraction")


def standby_services(env: Mapping[str, str]) -> frozenset[str]:
    """The services this node keeps a warm standby of (``RMAP2P_WARM_STANDBY``: names, comma-separated; ``none``)."""
    raw = env.get(STANDBY_ENV)
    if raw is None:
        return frozenset(STANDBY_DEFAULT)
    names = service_names(raw)
    if names & {"none", "0", "off"}:
        return frozenset()
    unknown = sorted(s for s in names if by_name(s) is None)
    if unknown:
        log.warning("%s: ignoring unknown service %s (names from the catalog, or 'none')", STANDBY_ENV, ", ".join(unknown))
    return frozenset(names - set(unknown))


IN_DAEMON = ("coordinator",)
"""Services the daemon itself provides: the coordinator is the admin API every node serves."""


class InDaemonRunner:
    """A service that is part of the daemon (the coordinator role): healthy while the node's HTTP API is."""

    def __init__(self, service: str, port: int | None) -> None:
        self.service = service
        self._port = port
        self._running = False

    @property
    def port(self) -> int | None:
        return self._port if self._running else None

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return ()

    async def start(self) -> None:
        self._running = True

    async def health(self) -> str:
        return "healthy" if self._running else "starting"

    async def stop(self) -> None:
        self._running = False


RunnerFactory = Callable[[ServiceSpec], Runner]
Probe = Callable[[Sequence[Gpu]], Mapping[str, tuple[bool, str]]]
"""What this machine, with these GPUs, can run: service -> (able, one-line reason)."""


class ServiceManager:
    """Runs this node's row of the allocation.

    ``factory`` builds a service's runner (default: the real runner where one
    exists, else the echo ``PlaceholderRunner``); ``echo`` makes every service
    an echo server, for testing the overlay without models. ``probe`` says
    what this machine can start (default: ``services.capabilities.probe`` on
    ``env``, merged with ``services.storage_probe``); what it cannot is never
    advertised, so never assigned here. Replicated storage services (redis,
    postgres) go through ``services.stateful_manager`` (not in echo mode,
    and only with a data dir). ``stateful_ephemeral``: their servers listen
    on a free port even without ``ephemeral_ports`` (``--service-proxy``
    owns the standard ports).
    """

    def __init__(
        self,
        node: PoolHandle,
        factory: RunnerFactory | None = None,
        ephemeral_ports: bool = False,
        *,
        echo: bool = False,
        probe: Probe | None = None,
        env: Mapping[str, str] | None = None,
        stateful_ephemeral: bool = False,
    ) -> None:
        self.node = node
        self._ephemeral = ephemeral_ports
        self._echo = echo
        self._env = env if env is not None else os.environ
        self._factory = factory or self._default_factory
        self._probe = probe if probe is not None else (lambda gpus: {**probe_machine(self._env, gpus=gpus), **probe_storage(self._env)})
        self._stateful: StatefulServices | None = None
        if not echo and node.data_dir is not None:
            synchronous = self._env.get(SYNCHRONOUS_ENV, "") == "1"
            fencing = self._env.get(FENCING_ENV, "1") != "0"
            self._stateful = StatefulServices(
                node, ephemeral_ports=ephemeral_ports or stateful_ephemeral, synchronous=synchronous, fencing=fencing
            )
        self._runners: dict[str, Runner] = {}
        self._standby: dict[str, Runner] = {}
        """Started, not advertised: runners this node would need at once if another node died."""
        self._standby_services = frozenset() if echo else standby_services(self._env)
        self._standby_wanted: dict[str, float] = {}  # service -> loop time since it is wanted, not yet started
        self._standby_for: tuple[object, tuple[str, ...]] = (None, ())  # (allocation input, standby_for of it)
        self._health: dict[str, str] = {}
        self._failed: set[str] = set()
        self._unavailable: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._busy = asyncio.Lock()
        """Held by a reconcile and by ``hand_over``: a hand-over never interleaves with a reconcile."""
        self._handing_over = False
        self.reconciliations = 0

    # ------------------------------------------------------------ wiring

    def capabilities(self) -> tuple[str, ...]:
        """Services this node can run: those of its type this machine can start, minus any that failed here."""
        return capabilities(self.node.meta.worker_type, self._failed | set(self._unavailable))

    @property
    def unavailable(self) -> dict[str, str]:
        """Services this machine cannot start, each with the reason the probe gave."""
        return dict(self._unavailable)

    async def check_machine(self) -> None:
        """Probe what this machine can start (imports, models, memory: in a thread) and say so once."""
        if self._echo:
            log.info("node %s: echo services: every assigned service is an echo server (overlay testing)", self.node.node_id)
            return
        results = withheld(await asyncio.to_thread(self._probe, self.node.gpus), self._env)
        if self._stateful is None:
            for service in (*REPLICATED, *SINGLE_COPY):
                results[service] = (False, f"{service}: this node has no data dir to keep it in")
        self._unavailable = {s: why for s, (able, why) in results.items() if not able}
        if self._unavailable:
            # One line a volunteer can read at start: what this machine will not run, and why.
            reasons = "; ".join(
                why if why.startswith(f"{s}:") else f"{s}: {why}" for s, why in sorted(self._unavailable.items())
            )
            log.info("node %s: not offering %d services this machine cannot start: %s", self.node.node_id,
                     len(self._unavailable), reasons)

    def on_events(self, events: Sequence[MemberEvent]) -> None:
        self._wake.set()

    def _default_factory(self, spec: ServiceSpec) -> Runner:
        node = self.node
        if spec.name in IN_DAEMON:
            http = split_host_port(node.meta.http)
            return InDaemonRunner(spec.name, http[1] if http else None)
        port = 0 if self._ephemeral else spec.port
        if self._stateful is not None and self._stateful.handles(spec.name):
            return self._stateful.make_runner(spec.name, spec.port, self._gave_up)
        if spec.name in SINGLE_COPY and self._stateful is not None:
            name = spec.name
            return make_single_copy_runner(
                name, node.data_dir, node.service_host, port, node.node_id, node.pool_secret,  # type: ignore[arg-type]
                lambda: handover_source(name, node.members(), node.node_id), on_failed=self._gave_up,
            )  # fmt: skip
        if has_runner(spec.name) and not self._echo:
            env: dict[str, str] = {}
            http = split_host_port(node.meta.http)
            if http is not None:
                # Services that call others (notes-coa asks llm-inference) go through this node's gateway.
                env["RMAP2P_GATEWAY"] = f"http://{format_host_port(connect_host(http[0]), http[1])}"
            return make_runner(spec, node.service_host, port, node.node_id, env, on_failed=self._gave_up, gpus=node.gpus)
        return PlaceholderRunner(spec.name, node.service_host, port, node.node_id)

    def _gave_up(self, service: str, reason: str) -> None:
        # Supervision gave up: stop offering it, so the allocator places it elsewhere.
        log.error("node %s: %s keeps failing (%s); no longer offering it", self.node.node_id, service, reason)
        self._failed.add(service)
        self._wake.set()

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        await self.node.wait_settled()
        await self._remove_leftover_containers()
        await self.check_machine()
        self.node.on_view_change(self.on_events)
        self._publish()
        try:
            while True:
                waiting = self._stateful is not None and self._stateful.waiting()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RECHECK_WAITING if waiting else RECHECK)
                if self._wake.is_set():
                    await asyncio.sleep(DEBOUNCE)
                    self._wake.clear()
                await self.reconcile()
        finally:
            await self.stop_all()

    async def _remove_leftover_containers(self) -> None:
        """Remove the containers a killed run of this node left (``rmap2p.node`` label), before any service starts.

        A containerised Redis/PostgreSQL stops with its daemon (``container_life``) but its exited
        container stays; a MinIO/Neo4j/Chroma one outlives a SIGKILL outright.
        """
        try:
            await asyncio.to_thread(remove_leftovers, self.node.node_id, self._env)
        except Exception as exc:  # noqa: BLE001 - an engine that fails here fails the containers' own start, with its reason
            log.warning("node %s: could not list leftover containers: %s", self.node.node_id, exc)

    def decide(self) -> NodeActions:
        """What the allocation asks of this node now (``allocator.actions``, as the simulator asks it)."""
        if self._stateful is not None:
            return self._stateful.decide(self._runners)
        return node_actions(self.node.node_id, to_node_views(self.node.members()), self._runners)

    async def reconcile(self) -> None:
        async with self._busy:
            if self.node.leaving or self._handing_over:
                return
            await self._reconcile()

    async def hand_over(self) -> None:
        """Before this node leaves: stop reconciling, hand each primary role to a replica (bounded by the caller)."""
        self._handing_over = True  # no new reconcile starts from here on
        if self._stateful is None or not self._stateful.holds_primary():
            return  # nothing to hand over: do not wait for a reconcile that may be starting a model
        async with self._busy:
            await self._stateful.hand_over(self._runners, self._stop_for_handover)

    async def _stop_for_handover(self, service: str) -> None:
        await self._stop(service, "handed over before leaving", keep_claim=True)
        self._publish(force=True)

    async def _reconcile(self) -> None:
        self.reconciliations += 1
        for service in [s for s in self._runners if s in self._failed]:
            await self._stop(service, "supervision gave up")
        actions = self.decide()
        if self._stateful is not None:
            # First the copies that run: a promotion must not wait behind a new service's start
            # (a chromadb server takes seconds to come up).
            await self._stateful.step()
        for service in actions.start:
            await self._start(service)
        for service in actions.stop:
            await self._stop(service, "handed over: another node serves it healthy")
        if self._stateful is not None and (actions.start or actions.stop):
            await self._stateful.step()
        await self._keep_standbys()
        for service, runner in list(self._runners.items()):
            health = await runner.health()
            self._health[service] = self._stateful.health(service, health) if self._stateful is not None else health
        self._publish()

    async def _keep_standbys(self) -> None:
        """Start the standbys the view asks of this node, stop those it no longer does (module docstring)."""
        if not self._standby_services:
            return
        me = self.node.node_id
        views = to_node_views(self.node.members())
        key = allocation_input(views)
        if key != self._standby_for[0]:
            # One allocation per single runner: redone only when what the allocation reads changed.
            self._standby_for = (key, standby_for(me, views, self._standby_services))
        wanted = {
            s for s in self._standby_for[1]
            if s not in self._runners and s not in self._failed and s not in self._unavailable and has_runner(s)
        }  # fmt: skip
        for service in [s for s in self._standby if s not in wanted]:
            runner = self._standby.pop(service)
            await runner.stop()
            log.info("node %s: stopped the warm standby of %s (no longer the node that would take it over)", me, service)
        now = asyncio.get_running_loop().time()
        self._standby_wanted = {s: self._standby_wanted.get(s, now) for s in wanted if s not in self._standby}
        for service in sorted(s for s, since in self._standby_wanted.items() if now - since >= STANDBY_SETTLE):
            del self._standby_wanted[service]
            spec = by_name(service)
            if spec is None:
                continue
            runner = self._factory(spec)
            try:
                await runner.start()
            except RunnerError as exc:
                log.warning("node %s: cannot keep %s warm: %s", me, service, exc)
                continue
            self._standby[service] = runner
            log.info(
                "node %s: keeping a warm standby of %s: the allocation gives it to this node if its one runner dies",
                me, service,
            )  # fmt: skip

    async def _start(self, service: str) -> None:
        spec = by_name(service)
        if spec is None:
            return
        warm = self._standby.pop(service, None)
        if warm is not None:
            self._runners[service] = warm
            self._health[service] = await warm.health()
            log.info("node %s: started %s from its warm standby (%s)", self.node.node_id, service, self._health[service])
            return
        runner = self._factory(spec)
        stateful = self._stateful is not None and self._stateful.handles(service)
        if stateful and not await self._stateful.before_start(service, runner):  # type: ignore[union-attr, arg-type]
            return  # no role for it yet (see services.stateful_manager); the next reconcile retries
        self._health[service] = "starting"
        try:
            await runner.start()
        except RunnerError as exc:
            # Stop advertising what cannot start here, so the allocator places it elsewhere.
            log.error("node %s: %s; no longer offering %s", self.node.node_id, exc, service)
            self._failed.add(service)
            self._health.pop(service, None)
            if stateful:
                self._stateful.forget(service)  # type: ignore[union-attr]
            return
        self._runners[service] = runner
        log.info("node %s: started %s (assigned by the allocation)", self.node.node_id, service)

    async def _stop(self, service: str, why: str, *, keep_claim: bool = False) -> None:
        runner = self._runners.pop(service, None)
        self._health.pop(service, None)
        if self._stateful is not None and not keep_claim:
            self._stateful.forget(service)
        if runner is not None:
            await runner.stop()
            log.info("node %s: stopped %s (%s)", self.node.node_id, service, why)

    async def stop_all(self) -> None:
        for service in list(self._runners):
            with contextlib.suppress(Exception):
                await self._stop(service, "node shutting down")
        for service, runner in list(self._standby.items()):
            self._standby.pop(service, None)
            with contextlib.suppress(Exception):
                await runner.stop()

    def _publish(self, *, force: bool = False) -> None:
        node = self.node
        if node.leaving or (self._handing_over and not force):
            return
        services = tuple((s, self._health.get(s, "starting")) for s in sorted(self._runners))
        ports = tuple((s, r.port) for s, r in sorted(self._runners.items()) if r.port)
        models = tuple(sorted({m for r in self._runners.values() for m in r.loaded_models}))
        loading = tuple(
            (s, gossip_percent(p)) for s, r in sorted(self._runners.items())
            if self._health.get(s, "starting") != "healthy" and (p := getattr(r, "load_progress", None)) is not None
        )
        caps = self.capabilities()
        claims = self._stateful.gossip() if self._stateful is not None else node.meta.replication

        def change(meta: NodeMeta) -> NodeMeta:
            return replace(
                meta, services=services, service_ports=ports, loaded_models=models, capabilities=caps,
                replication=claims, loading=loading,
            )

        if change(node.meta) != node.meta:
            node.update_meta(change)

    @property
    def running(self) -> dict[str, str]:
        return dict(self._health)

    @property
    def standbys(self) -> dict[str, Runner]:
        """The warm standbys kept now, by service (started, not advertised)."""
        return dict(self._standby)

    def runner(self, service: str) -> Runner | None:
        """The runner serving ``service`` here, if any."""
        return self._runners.get(service)
