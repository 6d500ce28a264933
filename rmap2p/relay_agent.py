"""A relayed node's side of issue 16: which edges carry it, and moving to another when one dies.

Whether to be relayed at all is one function, :func:`relay_needed`
(``join --relay auto|always|never``): ``always`` and ``never`` say it;
``auto`` follows the reachability check (``RelayAgent.reachable``, set by
whoever runs that check: True directly reachable, False not, None not known
yet). Until a check reports False, ``auto`` behaves as ``never``.

When relayed, the agent keeps two control connections (:mod:`p2p.relay_client`):

- the **primary**, whose allocation is our advertised gossip address and
  whose HTTP allocation is our meta ``http``; every datagram we send goes
  through it (:class:`~p2p.relay_client.RelayedDatagrams`);
- a **standby** on another edge where one exists, allocated and kept alive
  but not advertised.

Relays are chosen among alive edge members whose meta offers relaying
(``meta.relay``) and that are not relayed themselves, in an order that
differs per node (:func:`relay_candidates`: blake2b of our id and theirs), so
relayed members spread over the edges instead of all picking the same one.
Before we have joined, the members are learnt from the seeds with one
push-pull that sends an empty digest (:func:`edges_from_seed`): the seed
answers with every record it holds and learns nothing of us, so we join only
once we have an address the pool can reach.

Failover. When the primary's connection ends (closed, or no frame for
``dead_after`` seconds while pinging every ``keepalive``: both well under the
SWIM suspicion timeout), the standby is promoted at once and we
re-advertise with ``Membership.readdress`` (a higher incarnation with the new
address, the same bump that refutes any suspicion the gap caused); then a
new standby is found. The old connection is always closed first, so the old
relay frees the old allocation and nothing can answer there in our name. A
node is therefore never declared dead merely because its relay changed: the
switch takes one round trip, the SWIM suspicion timeout several seconds.
``meta.relays`` names the primary, then the standby.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from membership import MemberView, RemoteProtocolError, Status, wire
from membership.messages import PushPull, PushPullReply
from p2p import identity as ident
from p2p.discovery import format_host_port
from p2p.keyring import NullSealer, Sealer
from p2p.relay_client import (
    HelloSigner,
    RelayClient,
    RelayedDatagrams,
    RelayError,
    StreamHandler,
)
from p2p.stream import StreamError, request, stream_aad

log = logging.getLogger(__name__)

Addr = tuple[str, int]
RELAY_MODES = ("auto", "always", "never")
MAX_RETRY = 30.0
"""Longest pause between looks for a missing relay (a relay's death wakes the agent at once)."""


def relay_needed(mode: str, reachable: bool | None) -> bool:
    """Whether this node should be carried by relays now: THE hook that decides.

    ``reachable`` is the reachability check's verdict (None: no verdict yet).
    ``auto`` relays only a node the check found unreachable.
    """
    if mode == "always":
        return True
    if mode == "never":
        return False
    return reachable is False


@dataclass(frozen=True, slots=True)
class RelayCandidate:
    node_id: str
    addr: Addr


def _split(text: str) -> Addr | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    return host.strip("[]"), int(port)


def relay_candidates(members: Iterable[MemberView], me: str, exclude: Iterable[str] = ()) -> list[RelayCandidate]:
    """Alive edges offering a relay, not relayed themselves, in this node's own order (pure)."""
    skip = set(exclude) | {me}
    out = []
    for m in members:
        if m.node in skip or m.status is not Status.ALIVE or m.meta.relays:
            continue
        addr = _split(m.meta.relay)
        if addr is None:
            continue
        out.append(RelayCandidate(m.node, addr))
    return sorted(out, key=lambda c: hashlib.blake2b(f"{me}/{c.node_id}".encode(), digest_size=8).digest())


async def edges_from_seed(addr: Addr, sealer: Sealer, cluster: str, timeout: float = 5.0) -> list[MemberView]:
    """The members a seed knows, fetched without announcing ourselves (empty-digest push-pull).

    Records whose signature does not verify are left out. Raises StreamError when the seed
    does not answer.
    """
    frame = wire.encode_frame(PushPull(cluster, False, ()))
    reply = await request(addr, frame, sealer, timeout=timeout, aad=stream_aad(cluster))
    try:
        msg = wire.decode_frame(reply or b"")
    except RemoteProtocolError as exc:
        raise StreamError(f"{format_host_port(*addr)}: bad push-pull reply: {exc}") from None
    if not isinstance(msg, PushPullReply) or msg.cluster != cluster:
        raise StreamError(f"{format_host_port(*addr)}: not a push-pull reply of cluster {cluster!r}")
    out = []
    for st in msg.states:
        a = st.alive
        if not ident.verify(a.node, a.public_key, a.signed_payload(), a.signature):
            continue
        try:
            meta = a.meta
        except RemoteProtocolError as exc:
            log.debug("seed %s: record of %s has bad metadata: %s", format_host_port(*addr), a.node, exc)
            continue
        out.append(MemberView(a.node, st.status, st.incarnation, a.addr, meta, meta.load, None, None))
    return out


@dataclass(frozen=True, slots=True)
class RelayTimings:
    keepalive: float = 0.5
    """Seconds between our pings on a control connection (the daemon passes half a probe interval)."""
    dead_after: float = 2.0
    """A relay silent this long is dead (the daemon passes two probe intervals, under any suspicion timeout)."""
    connect_timeout: float = 3.0
    retry_interval: float = 1.0
    """While we lack a primary or a standby, look again this often."""
    first_route_wait: float = 15.0
    """``--relay always``: how long the join waits for a first allocation before joining unrelayed."""


@dataclass(frozen=True, slots=True)
class NodePort:
    """What the agent needs of the daemon (rmap2p.daemon.Node builds one)."""

    members: Callable[[], list[MemberView]]
    seeds: Callable[[], Awaitable[list[Addr]]]
    readdress: Callable[[Addr, str, tuple[str, ...]], None]
    """(gossip address, http host:port, relays): re-advertise; ``relays`` empty means direct."""
    direct: Callable[[], tuple[Addr, str]]
    """Our own (gossip address, http) for going back to direct."""


class RelayAgent:
    def __init__(
        self,
        port: NodePort,
        identity: HelloSigner,
        datagrams: RelayedDatagrams,
        on_stream: StreamHandler,
        sealer: Sealer,
        cluster: str,
        mode: str,
        timings: RelayTimings | None = None,
    ) -> None:
        if mode not in RELAY_MODES:
            raise ValueError(f"relay mode must be one of {RELAY_MODES}")
        self.port = port
        self.identity = identity
        self.datagrams = datagrams
        self.on_stream = on_stream
        self.sealer = sealer
        self.cluster = cluster
        self.mode = mode
        self.timings = timings or RelayTimings()
        self.reachable: bool | None = None
        """The reachability check's verdict; set it and call :meth:`wake`."""
        self.primary: RelayClient | None = None
        self.standby: RelayClient | None = None
        self.failovers = 0
        self.routed = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._advertised: tuple[str, ...] = ()

    def wake(self) -> None:
        self._wake.set()

    @property
    def relays(self) -> tuple[str, ...]:
        return tuple(c.relay_node for c in (self.primary, self.standby) if c is not None)

    async def wait_routed(self) -> bool:
        """``--relay always``: wait (bounded) for a first allocation before joining; True if we have one."""
        if not relay_needed(self.mode, self.reachable):
            return False
        try:
            async with asyncio.timeout(self.timings.first_route_wait):
                await self.routed.wait()
            return True
        except TimeoutError:
            log.warning(
                "node %s: no relay allocated within %.0fs; joining unrelayed and still trying",
                self.identity.node_id, self.timings.first_route_wait,
            )
            return False

    async def run(self) -> None:
        idle = 0
        try:
            while True:
                if relay_needed(self.mode, self.reachable):
                    await self._fill()
                elif self.primary is not None or self.standby is not None:
                    self._go_direct()
                # Without a primary, look again soon (a relay's death also wakes us at once);
                # for a missing standby, or with nothing missing, back off.
                idle = 0 if self.primary is None and relay_needed(self.mode, self.reachable) else idle + 1
                self._wake.clear()
                try:
                    async with asyncio.timeout(min(self.timings.retry_interval * 2 ** min(idle, 5), MAX_RETRY)):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for c in (self.primary, self.standby):
                if c is not None:
                    c.close()
                    await c.wait_streams()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks))

    # ------------------------------------------------------------ choosing relays

    async def _candidates(self, exclude: Iterable[str]) -> list[RelayCandidate]:
        me = self.identity.node_id
        members = self.port.members()
        found = relay_candidates(members, me, exclude)
        if found or any(m.node != me and not m.status.is_down for m in members):
            # In a pool, our view is as good as a seed's: no full-state fetch every retry.
            return found
        # Not joined yet: ask the seeds who the edges are.
        for seed in await self.port.seeds():
            try:
                members = await edges_from_seed(seed, self.sealer, self.cluster, self.timings.connect_timeout)
            except (StreamError, OSError) as exc:
                log.debug("node %s: seed %s: %s", me, format_host_port(*seed), exc)
                continue
            found = relay_candidates(members, me, exclude)
            if found:
                return found
        return []

    async def _connect(self, exclude: Iterable[str]) -> RelayClient | None:
        for cand in await self._candidates(exclude):
            client = RelayClient(
                cand.addr, cand.node_id, self.identity, self.datagrams.deliver, self.on_stream, self.sealer,
                cluster=self.cluster, keepalive=self.timings.keepalive, dead_after=self.timings.dead_after,
                connect_timeout=self.timings.connect_timeout,
            )
            try:
                await client.connect()
            except RelayError as exc:
                log.warning("node %s: relay %s (%s) unusable: %s", self.identity.node_id, cand.node_id, format_host_port(*cand.addr), exc)
                continue
            task = asyncio.get_running_loop().create_task(self._watch(client), name=f"relay {cand.node_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return client
        return None

    async def _fill(self) -> None:
        if self.primary is None and self.standby is not None:
            self._promote_standby("no primary")
        if self.primary is None:
            client = await self._connect(())
            if client is None:
                return
            self.primary = client
            self._advertise(f"carried by {client.relay_node}")
        if self.standby is None:
            client = await self._connect([self.primary.relay_node])
            if client is not None:
                if self.primary is None:  # the primary died while we dialled: this one takes over
                    self.primary = client
                else:
                    self.standby = client
                self._advertise("standby" if self.standby is client else "carried after a failover")

    def _advertise(self, why: str) -> None:
        primary = self.primary
        if primary is None:
            return
        self.datagrams.route = primary
        relays = self.relays
        if relays == self._advertised and self.routed.is_set():
            return
        self._advertised = relays
        log.info(
            "node %s: relayed through %s at %s (http %s), standby %s (%s)",
            self.identity.node_id, primary.relay_node, format_host_port(*primary.gossip_addr), primary.http_addr,
            self.standby.relay_node if self.standby else "none", why,
        )
        if isinstance(self.sealer, NullSealer) and not self.routed.is_set():
            log.warning(
                "node %s: no cluster keyring: the relay tunnels are authenticated by this node's signature "
                "only, not encrypted (start the pool with --key-file to seal them)", self.identity.node_id,
            )
        self.port.readdress(primary.gossip_addr, primary.http_addr, relays)
        self.routed.set()

    def _promote_standby(self, why: str) -> None:
        standby, self.standby = self.standby, None
        if standby is None or standby.closed:
            return
        self.primary = standby
        self.failovers += 1
        self._advertise(f"failover: {why}")

    async def _watch(self, client: RelayClient) -> None:
        reason = await client.run()
        client.close()
        if client is self.primary:
            log.warning("node %s: relay %s lost: %s", self.identity.node_id, client.relay_node, reason)
            self.primary = None
            self.datagrams.route = None
            self._promote_standby(f"{client.relay_node} {reason}")
        elif client is self.standby:
            log.info("node %s: standby relay %s lost: %s", self.identity.node_id, client.relay_node, reason)
            self.standby = None
            self._advertise("standby lost")
        self._wake.set()

    def _go_direct(self) -> None:
        for c in (self.primary, self.standby):
            if c is not None:
                c.close()
        self.primary = self.standby = None
        self.datagrams.route = None
        self._advertised = ()
        self.routed.clear()
        addr, http = self.port.direct()
        log.info("node %s: no longer relayed; reached directly at %s", self.identity.node_id, format_host_port(*addr))
        self.port.readdress(addr, http, ())
