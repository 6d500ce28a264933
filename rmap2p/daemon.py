"""The asyncio shell around the sans-I/O membership machine (aioquic's ``transmit()`` shape).

On every input (a datagram, a TCP request, a stream reply) the node calls
the machine with ``now=loop.time()``, flushes its outboxes and re-arms one
``call_at(next_deadline)``; the timer callback calls ``tick(now)`` and does
the same. All background work lives in one ``asyncio.TaskGroup`` owned by
``Node.run()``: the receive loop, the sender, the join/rejoin loop, the load
sampler, outgoing TCP exchanges, the HTTP runner and the service
reconciler. ``Node.stop()`` (SIGINT, SIGTERM, ``POST /api/admin/leave``)
leaves gracefully: it first runs the ``before_leave`` hooks while still a
member (the service manager hands its primary roles over to replicas
there), bounded by ``NodeConfig.handover_timeout``; then it announces the
leave, lets gossip carry it for a moment, stops services, then cancels and
awaits every task.

Datagrams move through a :class:`p2p.transport.DatagramTransport` that a
``transport_factory`` makes (real UDP by default, a ``MemoryNetwork``
endpoint in tests), always wrapped in a :class:`~p2p.transport.SealedTransport`
bound to the cluster name. Push-pull uses TCP streams on the same port.
What lives elsewhere: seeds and the join loop in :mod:`rmap2p.join`, the
copied-identity rule in :mod:`rmap2p.identity_conflict`, bind and advertised
addresses in :mod:`rmap2p.addresses`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from membership import EventKind, Load, MemberEvent, Membership, MemberView, NodeMeta, SwimConfig, wire
from membership.messages import Addr
from membership.reach import Reachability
from p2p import identity as ident
from p2p.discovery import format_host_port
from p2p.keyring import Keyring, NullSealer, Sealer, load_keyring, save_keyring
from p2p.mdns import MdnsDiscovery
from p2p.relay_client import RelayedDatagrams
from p2p.relay_link import splice
from p2p.relay_server import RelayLimits, RelayServer
from p2p.stream import AuthRefused, StreamError, StreamServer, request, stream_aad
from p2p.transport import (
    DatagramTransport,
    SealedTransport,
    TransportClosed,
    UdpTransport,
)
from rmap2p import hardware
from rmap2p.addresses import (
    advertise_host,
    advertised_http,
    default_http_bind,
    is_loopback,
    loopback_http_problem,
    wildcard_for,
)
from rmap2p.edge import EdgeEvidence, EdgeState, EdgeTimings, next_edge_state
from rmap2p.identity_conflict import DaemonClaim, this_daemon_yields
from rmap2p.join import JoinLoop, JoinTimings, KnownEdges, Seeds, edges_in
from rmap2p.reach_monitor import ReachMonitor
from rmap2p.relay_agent import NodePort, RelayAgent, RelayTimings
from services.handle import RequestCounter
from services.log_limits import LogLimiter, suppressed_note
from services.routing import connect_host

log = logging.getLogger(__name__)

TransportFactory = Callable[[str, int, int], Awaitable[DatagramTransport]]
"""``await factory(host, port, max_size)``: an unsealed datagram transport bound there (port 0: any)."""

HANDOVER_TIMEOUT = 20.0
"""Default bound on the ``before_leave`` hooks: a leave never waits longer for its hand-overs."""
LEAVE_GRACE = 1.0
"""Seconds of gossip after announcing a leave, so peers hear it from us and not by timeout."""
LOAD_SAMPLE_INTERVAL = 2.0
MAX_STREAMS_IN_FLIGHT = 32
OUTBOX_LIMIT = 4096


class StartupError(RuntimeError):
    """The node cannot start (port taken, data dir locked, bad key file...): a message for the user."""


@dataclass(frozen=True)
class NodeConfig:
    bind: Addr = ("0.0.0.0", 7946)
    http: Addr | None = None
    """HTTP bind address; None: the bind host of ``bind`` with port 8080 (rmap2p/addresses.py).
    ``Node.config.http`` is always resolved."""
    advertise: Addr | None = None
    join: tuple[Addr, ...] = ()
    worker_type: str = "auto"
    name: str = ""
    specialization: str = ""
    data_dir: Path = Path("~/.rmap2p")
    key_file: Path | None = None
    bootstrap_file: str | None = None
    cluster: str = "rmap2p"
    mdns: bool = True
    services: bool = True
    ephemeral_service_ports: bool = False
    """Let the OS pick each service's port (many nodes on one host); the port is gossiped."""
    echo_services: bool = False
    """Every assigned service an echo server (overlay tests without models)."""
    service_proxy: tuple[tuple[str, int], ...] = ()
    """``--service-proxy``: (service, local port) forwarded to each stateful service's primary."""
    swim: SwimConfig = field(default_factory=SwimConfig.lan)
    rejoin_interval: float = 5.0
    """While alone, retry every seed this often (with back-off up to 8×)."""
    recontact_interval: float = 30.0
    """Once in a pool, push-pull this often with seeds that are not alive in our view."""
    edge: EdgeTimings = field(default_factory=EdgeTimings)
    """Evidence window and hold time of edge promotion/demotion for ``--type auto`` (rmap2p/edge.py)."""
    reach_interval: float = 300.0
    """Seconds between reachability checks by edge nodes (rmap2p/reach_monitor.py); 0: never check."""
    relay: str = "auto"
    """``--relay auto|always|never``: whether this node may be carried by edges' relays
    (rmap2p/relay_agent.py ``relay_needed``)."""
    relay_offer: bool = True
    """An edge node carries unreachable members (p2p/relay_server.py); ``--no-relay-offer`` turns it off."""
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    handover_timeout: float = HANDOVER_TIMEOUT
    """Seconds a graceful leave gives its ``before_leave`` hooks (hand-overs) before leaving anyway."""


async def udp_transport(host: str, port: int, max_size: int) -> DatagramTransport:
    """The production transport factory: real UDP."""
    return await UdpTransport.bind(host, port, max_size=max_size)


class Node:
    def __init__(self, config: NodeConfig, *, transport_factory: TransportFactory = udp_transport) -> None:
        if config.http is None:
            config = replace(config, http=default_http_bind(config.bind))
        self.config = config
        self._transport_factory = transport_factory
        self.started_at = time.time()
        self.machine: Membership | None = None
        self.identity: ident.NodeIdentity | None = None
        self.sealer: Sealer = NullSealer()
        self.keyring: Keyring | None = None
        self.worker_type = config.worker_type
        self.hardware: hardware.Hardware | None = None
        self.http_addr: Addr | None = None
        self.gossip_addr: Addr | None = None
        self.ready = asyncio.Event()
        self.settled = asyncio.Event()
        """Set once the first join round is over (joined, or nobody answered): a node that
        allocates before it has seen the pool would take services the pool already covers."""
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._udp: DatagramTransport | None = None
        self._tcp: StreamServer | None = None
        self._outbox: asyncio.Queue[tuple[bytes, Addr]] = asyncio.Queue(OUTBOX_LIMIT)
        self._streams = asyncio.Semaphore(MAX_STREAMS_IN_FLIGHT)
        self._tg: asyncio.TaskGroup | None = None
        self._view_listeners: list[Callable[[list[MemberEvent]], None]] = []
        self._extra_tasks: list[Callable[[], Awaitable[None]]] = []
        self._before_leave: list[Callable[[], Awaitable[None]]] = []
        self._mdns: MdnsDiscovery | None = None
        self._known_edges: KnownEdges | None = None
        self._joiner: JoinLoop | None = None
        self._warned_loopback_http = False
        self._saved_incarnation = -1
        self.edge_candidate = False
        self.relay_server: RelayServer | None = None
        """Our relay for unreachable members, on an edge (or an edge candidate) that offers one."""
        self.relay_agent: RelayAgent | None = None
        """Our side of being relayed (None with ``--relay never``)."""
        self._relayed_dgrams: RelayedDatagrams | None = None
        self._relay_http: str | None = None
        self._member_addrs: set[Addr] | None = None
        self.relayed_http_peers: dict[Addr, Addr] = {}
        """Our end of each HTTP connection a relay attached (loopback, ephemeral port) -> the peer the
        relay saw: the HTTP guard judges such a request by that peer, never as one from loopback."""
        self._direct_gossip: Addr | None = None
        self.edge_state = EdgeState()
        self._fallback_type = config.worker_type
        self.dropped_outbound = 0
        self.requests = RequestCounter()
        self.refused_by: dict[Addr, float] = {}
        """Peers that answered they cannot authenticate our frames, with when (loop time)."""
        self._quiet = LogLimiter()
        """Requests this node's gateway is serving: counted by services/, read into our load."""
        self.exit_reason = ""
        self.exit_error = False
        """True when the node stopped because of a problem (the CLI exits 1), not on request."""
        self.reach = ReachMonitor(self, config.reach_interval)
        # --relay auto: the reachability verdict is what decides whether relays carry us.
        self.reach.on_change(lambda verdict: self.set_reachable(verdict.reachable))

    @property
    def reachability(self) -> Reachability:
        """The latest verdict of the reachability check: ``.needs_relay`` when edges could not
        reach us at ``gossip_addr`` (UDP or TCP); unknown (no edge to ask) counts as direct."""
        return self.reach.verdict

    def on_reachability(self, callback: Callable[[Reachability], None]) -> None:
        """Call ``callback(verdict)`` whenever the reachability verdict changes."""
        self.reach.on_change(callback)

    @property
    def active_requests(self) -> int:
        return self.requests.active

    def _unauthenticated(self, peer: Addr) -> None:
        """A datagram or frame from ``peer`` failed authentication: say so, once per peer and interval."""
        held = self._quiet.allow(("unauthenticated", peer[0]), self._now())
        if held is not None:
            log.warning(
                "node %s: datagrams from %s fail authentication: different keyring or cluster name?%s",
                self.machine.id if self.machine else "?", format_host_port(*peer), suppressed_note(held),
            )

    # ------------------------------------------------------------ lifecycle

    def stop(self, reason: str = "stop requested", *, error: bool = False) -> None:
        """Leave gracefully and end ``run()``; ``error``: the reason is a failure to report."""
        if not self._stop.is_set():
            self.exit_reason = reason
            self.exit_error = error
            self._stop.set()

    def on_view_change(self, callback: Callable[[list[MemberEvent]], None]) -> None:
        """Call ``callback(events)`` after every batch of membership events."""
        self._view_listeners.append(callback)

    def add_task(self, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` inside the node's task group (before ``run()``)."""
        self._extra_tasks.append(factory)

    def before_leave(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` on a graceful stop, before the leave is announced (all bounded by ``handover_timeout``)."""
        self._before_leave.append(hook)

    async def run(self) -> None:
        cfg = self.config
        loop = self._loop = asyncio.get_running_loop()
        data_dir = cfg.data_dir.expanduser()
        try:
            lock = ident.lock_data_dir(data_dir)
        except ident.DataDirLocked as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._start(loop, data_dir)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._receive_loop())
                tg.create_task(self._send_loop())
                assert self._joiner is not None
                tg.create_task(self._join())
                if self.relay_agent is not None:
                    tg.create_task(self.relay_agent.run())
                tg.create_task(self._load_loop())
                if self.edge_candidate:
                    tg.create_task(self._edge_loop())
                tg.create_task(self.reach.run())
                for factory in self._extra_tasks:
                    tg.create_task(factory())
                self.ready.set()
                await self._stop.wait()
                await self._hand_over()
                await self._leave()
                raise _Shutdown
        except* _Shutdown:
            pass
        finally:
            await self._close()
            lock.release()

    async def _start(self, loop: asyncio.AbstractEventLoop, data_dir: Path) -> None:
        cfg = self.config
        try:
            self.identity = ident.NodeIdentity.load_or_create(data_dir)
            incarnation = ident.next_incarnation(data_dir)
        except (ident.IdentityError, OSError) as exc:
            raise StartupError(f"cannot use data dir {data_dir}: {exc}") from None
        if cfg.key_file is not None:
            try:
                self.keyring = load_keyring(cfg.key_file)
            except (OSError, ValueError) as exc:
                raise StartupError(f"cannot load key file {cfg.key_file}: {exc}") from None
            self.sealer = self.keyring
        self.hardware = await asyncio.to_thread(hardware.detect, data_dir)
        self.worker_type = hardware.resolve_worker_type(cfg.worker_type, self.hardware)
        if cfg.worker_type == "auto" and self.worker_type == "edge":
            # A public address makes us a candidate only: run as the fallback type until
            # peers show we are reachable and close (rmap2p/edge.py).
            self.edge_candidate = True
            self.worker_type = hardware.resolve_worker_type("auto", replace(self.hardware, public_ip=False))
        self._fallback_type = self.worker_type
        host, port = cfg.bind
        try:
            raw = await self._transport_factory(host, port, cfg.swim.max_datagram + 64)
        except OSError as exc:
            raise StartupError(f"cannot bind UDP {format_host_port(host, port)}: {exc.strerror or exc}") from None
        if cfg.relay != "never":
            # Datagrams may go through a relay later: every send then takes that path.
            raw = self._relayed_dgrams = RelayedDatagrams(raw)
        self._udp = SealedTransport(raw, self.sealer, cluster=cfg.cluster, on_unauthenticated=self._unauthenticated)
        port = self._udp.local_addr[1]
        self._tcp = StreamServer(
            host, port, self._handle_stream, self.sealer,
            max_frame=cfg.swim.max_stream_frame + 64, aad=stream_aad(cfg.cluster),
            on_unauthenticated=self._unauthenticated,
        )
        try:
            await self._tcp.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on TCP {format_host_port(host, port)}: {exc.strerror or exc}") from None
        self.gossip_addr = self._direct_gossip = cfg.advertise or (advertise_host(host), port)
        if cfg.relay_offer and (self.worker_type == "edge" or self.edge_candidate):
            self.relay_server = RelayServer(
                host, self.gossip_addr[0], ident.verify, self.sealer,
                cluster=cfg.cluster, limits=cfg.relay_limits, name=f"node {self.identity.node_id}",
                destinations=self._is_member_address,
            )
            try:
                await self.relay_server.start()
            except OSError as exc:
                raise StartupError(f"cannot listen for relaying on {host}: {exc.strerror or exc} (see --relay-ports)") from None
        self.machine = Membership(
            cfg.swim,
            self.identity,
            ident.verify,
            self.gossip_addr,
            self._initial_meta(),
            random.Random(int.from_bytes(self.identity.public_key[:8], "big") ^ time.monotonic_ns()),
            loop.time(),
            incarnation=incarnation,
            cluster=cfg.cluster,
        )
        self._known_edges = KnownEdges.load(data_dir)
        if self._relayed_dgrams is not None:
            self.relay_agent = RelayAgent(
                NodePort(self.members, self._seed_addrs, self.relay_readdress, self._direct_address),
                self.identity, self._relayed_dgrams, self._serve_relayed_stream, self.sealer, cfg.cluster, cfg.relay,
                # Keepalives well inside one failure detection: a dead relay is replaced
                # before any suspicion of us can time out (suspicion >= 3 probe intervals).
                RelayTimings(keepalive=cfg.swim.probe_interval / 2, dead_after=2 * cfg.swim.probe_interval),
            )
        self._save_incarnation()
        if cfg.mdns:
            self._mdns = MdnsDiscovery(self.machine.id, cfg.cluster, self.gossip_addr)
            try:
                await self._mdns.start()
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("node %s: mDNS unavailable (%s); relying on --join and the bootstrap file", self.machine.id, exc)
                await self._mdns.close()
                self._mdns = None
        seeds = Seeds(cfg.join, cfg.bootstrap_file, data_dir, self._known_edges, self._mdns, self.gossip_addr, self.machine.id)
        self._joiner = JoinLoop(
            self.machine, seeds, self._flush, self._now, self.settled,
            JoinTimings(cfg.rejoin_interval, cfg.recontact_interval), refused_by=self.refused_by,
        )
        log.info(
            "node %s (%s, %s) gossiping on %s, incarnation %d",
            self.machine.id, self.config.name or socket.gethostname(), self.worker_type,
            format_host_port(*self.gossip_addr), incarnation,
        )
        self._rearm()

    def _initial_meta(self) -> NodeMeta:
        cfg = self.config
        return NodeMeta(
            name=cfg.name or socket.gethostname(),
            worker_type=self.worker_type,
            http=self._advertised_http(),
            specialization=cfg.specialization,
            edge_public=bool(self.hardware and self.hardware.public_ip),
            started_at=int(self.started_at),
            relay=self._relay_offer(),
        )

    def _relay_offer(self) -> str:
        """``meta.relay``: our relay listener while we are an edge that runs one."""
        if self.relay_server is None or self.worker_type != "edge":
            return ""
        return self.relay_server.advertised

    def set_http_addr(self, addr: Addr) -> None:
        """The HTTP server is listening here (known only once it has bound)."""
        self.http_addr = addr
        if self.machine is not None:
            self.update_meta(lambda m: replace(m, http=self._advertised_http()))

    def _http_bind(self) -> Addr:
        http = self.http_addr or self.config.http
        assert http is not None  # resolved in __init__
        return http

    def _advertised_http(self) -> str:
        if self._relay_http is not None:
            return self._relay_http  # the HTTP allocation on our relay
        return advertised_http(self._http_bind(), self.config.bind[0], self.gossip_addr)

    def probe_soon(self, node: str) -> None:
        """Have membership probe ``node`` next: this node failed to connect to it (see ``Membership.probe_soon``)."""
        machine = self._require_machine()
        if machine.probe_soon(node, self._now()):
            log.info("node %s: probing %s now: a connect to it failed", machine.id, node)
            self._flush()

    def check_alive(self, nodes: Iterable[str]) -> None:
        """Ping ``nodes`` now for fresh first-hand evidence that they answer (``Membership.check_alive``)."""
        machine = self._require_machine()
        if machine.check_alive(nodes, self._now()):
            self._flush()

    def update_meta(self, change: Callable[[NodeMeta], NodeMeta]) -> None:
        machine = self._require_machine()
        machine.update_meta(change(machine.meta), self._now())
        self._flush()

    async def _hand_over(self) -> None:
        """Run the ``before_leave`` hooks while still a member; a leave waits for them only so long."""
        if not self._before_leave or self.machine is None:
            return
        began = self._now()
        try:
            async with asyncio.timeout(self.config.handover_timeout):
                for hook in self._before_leave:
                    await hook()
        except TimeoutError:
            log.warning("node %s: hand-over before leaving not done after %.0f s: leaving anyway", self.machine.id, self._now() - began)
        except Exception as exc:  # noqa: BLE001 - a failed hand-over must not stop the leave
            log.warning("node %s: hand-over before leaving failed (%s): leaving anyway", self.machine.id, exc)

    async def _leave(self) -> None:
        machine = self.machine
        if machine is None:
            return
        log.info("node %s leaving the pool (%s)", machine.id, self.exit_reason)
        machine.leave(self._now())
        self._flush()
        # Let the gossip tick carry the leave while the sender drains.
        deadline = self._now() + LEAVE_GRACE
        while self._now() < deadline and (machine.broadcasts_queued() or not self._outbox.empty()):
            await asyncio.sleep(0.05)
        self._save_incarnation()

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._mdns is not None:
            await self._mdns.close()
        if self._tcp is not None:
            await self._tcp.close()
        if self.relay_server is not None:
            await self.relay_server.close()
        if self._udp is not None:
            self._udp.close()
            await self._udp.wait_closed()

    # ------------------------------------------------------------ the pump

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _require_machine(self) -> Membership:
        if self.machine is None:
            raise RuntimeError("node not started")
        return self.machine

    def _flush(self) -> None:
        machine = self._require_machine()
        for data, addr in machine.take_datagrams():
            try:
                self._outbox.put_nowait((data, addr))
            except asyncio.QueueFull:
                self.dropped_outbound += 1
        for req in machine.take_streams():
            if self._tg is not None:
                self._tg.create_task(self._stream_exchange(req.token, req.addr, req.payload, req.expect_reply, req.kind))
            elif req.expect_reply:
                machine.stream_reply(req.token, None, self._now())
        if machine.incarnation != self._saved_incarnation:
            self._save_incarnation()
        events = machine.take_events()
        if events:
            self._member_addrs = None  # a member came, went or moved: rebuilt on the next use
            for ev in events:
                self._log_event(ev)
            if self._known_edges is not None:
                self._known_edges.remember(edges_in(events, machine))
            self._check_http_reach()
            for listener in self._view_listeners:
                listener(events)
        self._rearm()

    def _rearm(self) -> None:
        machine = self._require_machine()
        deadline = machine.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        machine = self._require_machine()
        machine.tick(self._now())
        self._flush()

    def _save_incarnation(self) -> None:
        # Persisted at every change: a restarted node must come back above anything it ever
        # announced, or its own old alive records would look like a second daemon in its name.
        machine = self._require_machine()
        try:
            ident.save_incarnation(self.config.data_dir.expanduser(), machine.incarnation)
            self._saved_incarnation = machine.incarnation
        except OSError as exc:
            log.warning("node %s: cannot save incarnation: %s", machine.id, exc)

    def _check_http_reach(self) -> None:
        """Warn once when our HTTP port is on loopback but members on other hosts need to reach it."""
        if self._warned_loopback_http or self.machine is None:
            return
        machine = self.machine
        http_host, http_port = self._http_bind()
        if not is_loopback(http_host):
            return  # the usual case: no need to look at the members
        hosts = [m.addr[0] for m in machine.members() if m.node != machine.id and not m.status.is_down]
        remote = loopback_http_problem(http_host, hosts, machine.addr[0])
        if remote is None:
            return
        self._warned_loopback_http = True
        log.warning(
            "node %s: HTTP API bound to loopback %s, but pool members run on other hosts (e.g. %s): "
            "their gateways cannot forward requests or broadcast jobs to this node. "
            "Fix: start without --http (it then binds the --bind host) or with --http %s:%d.",
            machine.id, format_host_port(http_host, http_port), remote, wildcard_for(http_host), http_port,
        )

    def _log_event(self, ev: MemberEvent) -> None:
        machine = self._require_machine()
        if ev.kind is EventKind.CONFLICT:
            other = DaemonClaim(ev.record.meta.started_at if ev.record is not None else 0, ev.detail)
            # Written as the core writes ``detail`` (host:port, no brackets), so both sides compare alike.
            mine = DaemonClaim(machine.meta.started_at, f"{machine.addr[0]}:{machine.addr[1]}")
            if this_daemon_yields(mine, other):
                log.error(
                    "node %s: another daemon at %s already runs with this identity (was the data dir "
                    "%s copied?); stopping. Give each machine its own --data-dir.",
                    machine.id, ev.detail, self.config.data_dir,
                )
                self.stop(f"identity conflict: node {machine.id} already runs at {ev.detail}", error=True)
            else:
                log.error(
                    "node %s: a newer daemon at %s claims our identity (copied data dir?); keeping ours",
                    machine.id, ev.detail,
                )
            return
        level = logging.DEBUG if ev.kind in (EventKind.UPDATED, EventKind.REAPED) else logging.INFO
        # Labelled fields, one event per line: greppable by member, event or address.
        rec = machine.alive_record(ev.node) if ev.kind is not EventKind.REAPED else None
        addr = f" addr={format_host_port(*rec.addr)}" if rec is not None else ""
        detail = f" detail={ev.detail!r}" if ev.detail else ""
        log.log(level, "node %s: member=%s event=%s incarnation=%d%s%s", machine.id, ev.node, ev.kind, ev.incarnation, addr, detail)

    # ------------------------------------------------------------ I/O loops

    async def _receive_loop(self) -> None:
        assert self._udp is not None
        machine = self._require_machine()
        while True:
            try:
                plain, addr = await self._udp.recv()
            except TransportClosed:
                return
            probe = wire.reach_probe_of(plain)
            if probe is not None:
                self.reach.datagram(probe)  # an edge reaching us back: not gossip
                continue
            try:
                machine.receive(plain, addr, self._now())
            except Exception:
                # A bug of ours that some input triggers: say so loudly, but one datagram
                # must not take the node out of the pool.
                log.exception("node %s: internal error handling a datagram from %s", machine.id, format_host_port(*addr))
            self._flush()

    async def _send_loop(self) -> None:
        assert self._udp is not None
        while True:
            data, addr = await self._outbox.get()
            try:
                await self._udp.send(data, addr)
            except (OSError, ValueError) as exc:
                # Addresses come from peers' records: an unusable one costs that datagram only.
                self.dropped_outbound += 1
                log.debug(
                    "node %s: cannot send to %s: %s", self.machine.id if self.machine else "?", format_host_port(*addr), exc
                )

    async def _stream_exchange(self, token: int, addr: Addr, payload: bytes, expect_reply: bool, kind: str) -> None:
        machine = self._require_machine()
        reply = None
        async with self._streams:
            try:
                reply = await request(
                    addr, payload, self.sealer, timeout=10.0 if kind != "ping" else self.config.swim.probe_interval,
                    expect_reply=expect_reply, max_frame=self.config.swim.max_stream_frame + 64,
                    aad=stream_aad(self.config.cluster),
                )
            except AuthRefused as exc:
                self.refused_by[addr] = self._now()
                held = self._quiet.allow(("refused", addr), self._now())
                if held is not None:
                    log.warning("node %s: %s with %s refused: %s%s", machine.id, kind, format_host_port(*addr), exc, suppressed_note(held))
            except (StreamError, OSError, ValueError) as exc:
                log.debug("node %s: %s exchange with %s failed: %s", machine.id, kind, format_host_port(*addr), exc)
        if expect_reply:
            try:
                if machine.stream_reply(token, reply, self._now()) and kind == "push-pull" and self._joiner:
                    self._joiner.push_pull_answered()
            except Exception:
                log.exception(
                    "node %s: internal error handling a %s reply from %s", machine.id, kind, format_host_port(*addr)
                )
            self._flush()

    async def _handle_stream(self, payload: bytes, peer: Addr) -> bytes | None:
        machine = self._require_machine()
        reach = wire.reach_frame_of(payload)
        if reach is not None:
            return await self.reach.frame(reach, peer)
        reply = machine.handle_stream(payload, peer, self._now())
        self._flush()
        return reply

    # ------------------------------------------------------------ relaying (rmap2p/relay_agent.py)

    async def _join(self) -> None:
        assert self._joiner is not None
        if self.relay_agent is not None:
            # Relayed from the start: join with the allocation as our address, so the pool
            # never holds a record of ours at an address it cannot reach.
            await self.relay_agent.wait_routed()
        await self._joiner.run()

    async def _seed_addrs(self) -> list[Addr]:
        assert self._joiner is not None
        return await self._joiner.seeds.resolved()

    def _direct_address(self) -> tuple[Addr, str]:
        assert self._direct_gossip is not None
        self._relay_http = None
        return self._direct_gossip, self._advertised_http()

    def _is_member_address(self, addr: Addr) -> bool:
        """Whether ``addr`` is the gossip address of a member we know (any status): where our relay
        lets carried members send datagrams. The set is rebuilt when the view changed."""
        machine = self.machine
        if machine is None:
            return False
        if self._member_addrs is None:
            self._member_addrs = {m.addr for m in machine.members()}
        return addr in self._member_addrs

    def set_reachable(self, reachable: bool | None) -> None:
        """The reachability check's verdict on this node (None: unknown). With ``--relay auto`` a
        False makes the node find relays and re-advertise through them; True goes back to direct
        (``rmap2p.relay_agent.relay_needed`` decides). No effect with ``--relay never``."""
        if self.relay_agent is not None and self.relay_agent.reachable != reachable:
            self.relay_agent.reachable = reachable
            self.relay_agent.wake()

    def relay_readdress(self, gossip: Addr, http: str, relays: tuple[str, ...]) -> None:
        """We are reached at ``gossip`` and ``http`` now (a relay's allocations, or our own when ``relays`` is empty)."""
        machine = self._require_machine()
        self._relay_http = http if relays else None
        self.gossip_addr = gossip
        machine.readdress(gossip, self._now(), replace(machine.meta, http=http, relays=relays))
        self._flush()

    async def _serve_relayed_stream(
        self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Addr
    ) -> None:
        """A TCP connection that arrived at one of our relay allocations, attached to us by the relay."""
        if kind == "gossip":
            assert self._tcp is not None
            await self._tcp.serve_connection(reader, writer, peer)
            return
        host, port = self._http_bind()
        try:
            local = await asyncio.open_connection(connect_host(host), port)
        except OSError as exc:
            log.debug("node %s: relayed HTTP from %s: cannot reach our HTTP server: %s", self._require_machine().id, peer, exc)
            return
        mine = local[1].get_extra_info("sockname")
        key = (str(mine[0]), int(mine[1]))
        self.relayed_http_peers[key] = peer
        try:
            await splice((reader, writer), local)
        finally:
            self.relayed_http_peers.pop(key, None)

    async def _edge_loop(self) -> None:
        """Promote this candidate to edge, and demote it again, by the rule in rmap2p/edge.py."""
        machine = self._require_machine()
        timings = self.config.edge
        while True:
            await asyncio.sleep(timings.check_interval)
            now = self._now()
            evidence = EdgeEvidence(machine.inbound_peers(now, timings.window), machine.num_active(), machine.rtt)
            before = self.edge_state
            self.edge_state = next_edge_state(before, evidence, now, timings)
            if self.edge_state.is_edge == before.is_edge:
                continue
            if self.edge_state.is_edge:
                log.info(
                    "node %s qualifies as edge (%s); switching from %s",
                    machine.id, self.edge_state.reason, self.worker_type,
                )
                self.worker_type = "edge"
            else:
                log.warning(
                    "node %s demoted from edge: %s; back to %s",
                    machine.id, self.edge_state.reason, self._fallback_type,
                )
                self.worker_type = self._fallback_type
            kind, offer = self.worker_type, self._relay_offer()
            self.update_meta(lambda m: replace(m, worker_type=kind, relay=offer))

    async def _load_loop(self) -> None:
        sampler = hardware.LoadSampler()
        try:
            while True:
                await asyncio.sleep(LOAD_SAMPLE_INTERVAL)
                figures = await asyncio.to_thread(sampler.sample)
                machine = self._require_machine()
                machine.update_load(
                    Load(
                        int(round(figures.cpu_percent)),
                        int(round(figures.memory_percent)),
                        int(round(figures.gpu_utilization)),
                        self.active_requests,
                    ),
                    self._now(),
                )
                self._flush()
        finally:
            sampler.close()

    # ------------------------------------------------------------ views for the API

    def members(self) -> list[MemberView]:
        return self._require_machine().members()

    def wall_time(self, loop_time: float | None) -> float | None:
        """Convert a loop-clock instant to Unix time for humans and JSON."""
        if loop_time is None:
            return None
        return time.time() - (self._now() - loop_time)

    def uptime(self) -> float:
        return time.time() - self.started_at

    def udp_stats(self) -> dict[str, int]:
        return self._udp.stats.as_dict() if self._udp is not None else {}

    def tcp_stats(self) -> dict[str, int]:
        return self._tcp.stats.as_dict() if self._tcp is not None else {}

    def save_keyring(self) -> None:
        if self.keyring is not None and self.config.key_file is not None:
            save_keyring(self.config.key_file, self.keyring)


class _Shutdown(Exception):
    """Raised inside the task group to cancel every task once the leave is done."""
