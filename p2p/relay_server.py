"""The relay an edge node runs for members nobody can reach (issue 16): TURN-like allocations.

Why allocations. A node behind a home router can dial out but nobody can dial
in. Its relay (an edge with a public address) gives it, on the edge's own
host, one port number bound for both UDP and TCP (its *gossip allocation*)
and one TCP port (its *HTTP allocation*). The relayed node advertises those
as its gossip address and its meta ``http``, so every other node reaches it
with no code change: SWIM probes, ping-reqs, gossip, push-pull and gateway
requests simply go to the relay's host. The SWIM core never knows.

The control connection. The relayed node keeps one outbound TCP connection
to the relay's listener (``meta.relay``) and speaks :mod:`p2p.relay_wire`
over it:

- **hello**: the relay sends a fresh nonce; the node signs it with its
  Ed25519 identity (:mod:`p2p.identity`), so the relay knows which node id it
  carries and a recorded hello cannot be replayed. One allocation per node
  id: a second hello from the same node replaces the first (a reconnect).
- **datagrams**: a datagram arriving at the gossip allocation from ``S``
  travels to the node as ``DGRAM_IN(S, bytes)``; the node feeds it to its
  receive path as if from ``S``. The node sends *all* its gossip datagrams
  as ``DGRAM_OUT(D, bytes)`` and the relay sends them from the allocation, so
  every peer sees one consistent address for it (an ack from an unexpected
  address would look like a second daemon to ``membership.machine``). ``D``
  must be a member's gossip address in the relay's own view
  (``destinations``): a relay is no UDP reflector towards other hosts.
- **streams**: a TCP connection to an allocation makes the relay send
  ``OPEN(id, kind, token, peer)``; the node dials a fresh connection to the
  listener, sends ``ATTACH(node, id, token)``, and the relay splices the two
  sockets (:func:`p2p.relay_link.splice`: both ways, streaming, backpressure).
- **keepalive**: the node pings; the relay answers and drops a control
  connection silent for ``idle_timeout`` seconds, freeing the allocation.

Security. Control and attach frames are sealed with the cluster keyring
(AES-GCM, associated data :func:`p2p.relay_wire.relay_aad`) when the pool
has one: then only members can use a relay, and the tunnel is encrypted on
top of what it carries. Without a keyring the tunnel is authenticated by the
hello signature only: anyone may obtain an allocation under an identity of
their own (bounded by ``max_members``), and an on-path attacker could read
or hijack the plain stream tokens; the relay says so in its log at start.
The bytes spliced after ``ATTACH`` are exactly those a direct connection
would carry (gossip streams are sealed by the membership layer; HTTP between
nodes is signed by ``services.route_auth``), so relaying exposes nothing a
direct connection would not.

Limits (STYLE item 7), per :class:`RelayLimits`: at most ``max_members``
members carried (refusals logged with the node id), at most
``max_streams`` spliced streams per member, and a byte rate per member
and direction (:class:`~p2p.byte_bucket.ByteBucket`): datagrams over the
rate are dropped and counted, stream bytes wait (backpressure). A node that
reads its control connection too slowly loses datagrams, not relay memory
(``max_backlog``). A stream that is not attached within ``attach_timeout``
is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from p2p import relay_wire as rw
from p2p.byte_bucket import ByteBucket
from p2p.discovery import format_host_port
from p2p.keyring import NullSealer, Sealer
from p2p.relay_link import FrameLink, LinkClosed, splice

log = logging.getLogger(__name__)

Addr = tuple[str, int]
LOG_EVERY = 10.0
"""Seconds between two log lines about one member's drops or refusals of one kind."""
Verify = Callable[[str, bytes, bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What one relay carries; every default is documented in README ("Relays")."""

    max_members: int = 32
    """Members carried at once; a hello beyond this is refused (and logged with its node id)."""
    bytes_per_second: float = 1024 * 1024
    """Per member and direction, datagrams and streams together (0: unlimited). 1 MiB/s carries
    idle membership (about 1 KB/s) and a busy gateway's requests; raise it for bulk uploads."""
    burst_bytes: float = 2 * 1024 * 1024
    max_streams: int = 64
    """Spliced TCP streams per member at once (gossip and HTTP together)."""
    keepalive: float = 1.0
    """Ping interval suggested to members (they may ping more often)."""
    idle_timeout: float = 10.0
    """A control connection silent this long is dropped and its allocation freed."""
    hello_timeout: float = 5.0
    attach_timeout: float = 5.0
    max_backlog: int = 1024 * 1024
    """Bytes queued towards a member's control connection beyond which datagrams are dropped."""
    port_range: tuple[int, int] | None = None
    """``--relay-ports LO-HI``: the listener takes LO, allocations come from the rest; None: ephemeral."""

    def __post_init__(self) -> None:
        if self.max_members < 1 or self.max_streams < 1:
            raise ValueError("max_members and max_streams must be at least 1")
        if self.bytes_per_second < 0 or self.burst_bytes < rw.MAX_DATAGRAM:
            raise ValueError("bytes_per_second must be >= 0 and burst_bytes at least one datagram")
        if self.port_range is not None:
            lo, hi = self.port_range
            if not 0 < lo <= hi < 65536 or hi - lo < 2:
                raise ValueError("relay port range must be LO-HI within 1..65535 with at least 3 ports")


def parse_port_range(text: str) -> tuple[int, int]:
    """``LO-HI`` as a pair; ValueError with a user-facing message otherwise."""
    lo, sep, hi = text.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ValueError(f"expected LO-HI, got {text!r}")
    pair = (int(lo), int(hi))
    RelayLimits(port_range=pair)  # validates
    return pair


@dataclass(slots=True)
class CarriedStats:
    """Counters of one carried member (bytes as seen at the allocation)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    """Bytes from the pool towards the member (datagrams and streams)."""
    bytes_out: int = 0
    """Bytes from the member towards the pool."""
    dropped_rate: int = 0
    dropped_backlog: int = 0
    dropped_destination: int = 0
    """Datagrams the member asked us to send to an address that is no member's (see ``destinations``)."""
    streams: int = 0
    streams_refused: int = 0
    control_bytes_in: int = 0
    """Framed bytes received on the control connection (the member's datagrams, pings)."""
    control_bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class RelayStats:
    hellos: int = 0
    refused_full: int = 0
    refused_auth: int = 0
    bad_attach: int = 0
    allocations: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_Attached = tuple[asyncio.StreamReader, asyncio.StreamWriter, "asyncio.Future[None]"]
"""The node's side of a stream, and the future set when its splice has ended."""


class _UdpAllocation(asyncio.DatagramProtocol):
    def __init__(self, carried: _Carried) -> None:
        self.carried = carried

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.carried.from_pool(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("relay: allocation of %s: %s", self.carried.node_id, exc)


@dataclass
class _Carried:
    node_id: str
    link: FrameLink
    server: RelayServer
    inbound: ByteBucket
    outbound: ByteBucket
    stats: CarriedStats = field(default_factory=CarriedStats)
    udp: asyncio.DatagramTransport | None = None
    tcp: list[asyncio.Server] = field(default_factory=list)
    gossip_port: int = 0
    http_port: int = 0
    pending: dict[int, tuple[bytes, asyncio.Future[_Attached]]] = field(default_factory=dict)
    active_streams: int = 0
    closed: bool = False
    _logged: dict[str, float] = field(default_factory=dict)

    def note(self, what: str, msg: str, *args: object) -> None:
        """Log a refusal or drop for this member at most once per LOG_EVERY seconds per kind."""
        now = asyncio.get_running_loop().time()
        if now - self._logged.get(what, -LOG_EVERY) >= LOG_EVERY:
            self._logged[what] = now
            log.warning(msg, *args)

    def from_pool(self, data: bytes, src: Addr) -> None:
        now = asyncio.get_running_loop().time()
        if not self.inbound.take(len(data), now):
            self.stats.dropped_rate += 1
            self.note(
                "rate-in", "%s: dropping datagrams to node %s: over %.0f B/s (%d dropped so far)",
                self.server.name, self.node_id, self.inbound.rate, self.stats.dropped_rate,
            )
            return
        if self.link.backlog > self.server.limits.max_backlog:
            self.stats.dropped_backlog += 1
            return
        self.stats.datagrams_in += 1
        self.stats.bytes_in += len(data)
        self.link.send(rw.DgramIn(src[0], src[1], data))

    def to_pool(self, msg: rw.DgramOut) -> None:
        now = asyncio.get_running_loop().time()
        if not self.outbound.take(len(msg.data), now):
            self.stats.dropped_rate += 1
            self.note(
                "rate-out", "%s: dropping datagrams from node %s: over %.0f B/s (%d dropped so far)",
                self.server.name, self.node_id, self.outbound.rate, self.stats.dropped_rate,
            )
            return
        try:
            ipaddress.ip_address(msg.host.split("%", 1)[0])
        except ValueError:
            return  # peers' addresses are IP literals; a name would block in sendto
        dest = (msg.host, msg.port)
        if self.server.destinations is not None and not self.server.destinations(dest):
            self.stats.dropped_destination += 1
            self.note(
                "dest", "%s: dropping datagrams from node %s to %s: not a member's address",
                self.server.name, self.node_id, format_host_port(*dest),
            )
            return
        if self.udp is not None and not self.udp.is_closing():
            self.udp.sendto(msg.data, (msg.host, msg.port))
            self.stats.datagrams_out += 1
            self.stats.bytes_out += len(msg.data)

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.udp is not None:
            self.udp.close()
        for srv in self.tcp:
            srv.close()
        for _, fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()
        self.link.close()


class RelayServer:
    """Listens for relayed members' control and attach connections; owns their allocations.

    The constructor does no I/O; ``await start()`` listens, ``await close()``
    frees every allocation and ends every task. ``public_host`` is the address
    the pool reaches this edge at (its advertised gossip host); allocations are
    bound on ``host`` (the edge's bind host) and announced on ``public_host``.
    """

    def __init__(
        self,
        host: str,
        public_host: str,
        verify: Verify,
        sealer: Sealer | None = None,
        *,
        cluster: str = "rmap2p",
        limits: RelayLimits | None = None,
        name: str = "",
        rng: random.Random | None = None,
        destinations: Callable[[Addr], bool] | None = None,
    ) -> None:
        self.host = host
        self.public_host = public_host
        self.verify = verify
        self.sealer: Sealer = sealer if sealer is not None else NullSealer()
        self.cluster = cluster
        self.aad = rw.relay_aad(cluster)
        self.limits = limits or RelayLimits()
        self.name = name or "relay"
        self.destinations = destinations
        """Where carried members may send datagrams (the daemon: any member's gossip address);
        None: anywhere. Keeps a relay from being a UDP reflector towards arbitrary hosts."""
        self.stats = RelayStats()
        self._rng = rng or random.Random()
        self._server: asyncio.Server | None = None
        self._carried: dict[str, _Carried] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_ids = itertools.count(1)
        self._closing = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        port = self.limits.port_range[0] if self.limits.port_range else 0
        self._server = await asyncio.start_server(self._on_listener, self.host, port, reuse_address=True)
        if isinstance(self.sealer, NullSealer):
            log.warning(
                "%s: relay listening on %s without a cluster keyring: relay tunnels are authenticated by "
                "the nodes' signatures only, not encrypted (start the pool with --key-file to seal them)",
                self.name, format_host_port(*self.local_addr),
            )
        else:
            log.info("%s: relay listening on %s (sealed with the cluster keyring)", self.name, format_host_port(*self.local_addr))

    @property
    def local_addr(self) -> Addr:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("RelayServer is not listening")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def advertised(self) -> str:
        """``host:port`` to gossip in ``meta.relay``."""
        return format_host_port(self.public_host, self.local_addr[1])

    def carried(self) -> dict[str, CarriedStats]:
        """Node id -> counters, for every member carried now."""
        for c in self._carried.values():
            c.stats.control_bytes_in, c.stats.control_bytes_out = c.link.bytes_in, c.link.bytes_out
        return {node: c.stats for node, c in self._carried.items()}

    def allocation_of(self, node_id: str) -> tuple[int, int] | None:
        c = self._carried.get(node_id)
        return None if c is None else (c.gossip_port, c.http_port)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for c in list(self._carried.values()):
            c.release()
        self._carried.clear()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: relay task %s failed", self.name, task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------ listener

    async def _on_listener(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in a task we own (close() cancels it); asyncio's own callback
        # task just waits, and never ends cancelled (see p2p.stream for why).
        if self._closing:
            writer.transport.abort()
            return
        task = self._spawn(self._serve(reader, writer), "relay-conn")
        await asyncio.wait([task])
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FrameLink(reader, writer, self.sealer, self.aad)
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            first = await link.recv(self.limits.hello_timeout)
        except (LinkClosed, TimeoutError) as exc:
            log.debug("%s: connection from %s dropped before its first frame: %s", self.name, peer, exc)
            return
        if isinstance(first, rw.Control):
            await self._control(link, peer)
        elif isinstance(first, rw.Attach):
            await self._attach(first, reader, writer)
        else:
            log.debug("%s: %s opened with %s", self.name, peer, type(first).__name__)

    async def _control(self, link: FrameLink, peer: object) -> None:
        nonce = os.urandom(rw.NONCE_BYTES)
        link.send(rw.Challenge(nonce))
        try:
            hello = await link.recv(self.limits.hello_timeout)
        except (LinkClosed, TimeoutError) as exc:
            log.debug("%s: no hello from %s: %s", self.name, peer, exc)
            return
        self.stats.hellos += 1
        if not isinstance(hello, rw.Hello) or not self.verify(
            hello.node_id, hello.public_key, rw.hello_payload(self.cluster, nonce), hello.signature
        ):
            self.stats.refused_auth += 1
            log.warning("%s: refused relay hello from %s: bad signature", self.name, peer)
            link.send(rw.Refused("hello signature does not verify"))
            await link.drain()
            return
        node = hello.node_id
        old = self._carried.pop(node, None)
        if old is not None:
            log.info("%s: node %s reconnected; replacing its allocation", self.name, node)
            old.release()
        if len(self._carried) >= self.limits.max_members:
            self.stats.refused_full += 1
            log.warning(
                "%s: refused to carry node %s: already carrying %d members (max_members)",
                self.name, node, len(self._carried),
            )
            link.send(rw.Refused(f"relay full ({self.limits.max_members} members)"))
            await link.drain()
            return
        lim = self.limits
        carried = _Carried(
            node, link, self,
            ByteBucket(lim.bytes_per_second, lim.burst_bytes), ByteBucket(lim.bytes_per_second, lim.burst_bytes),
        )
        try:
            await self._allocate(carried)
        except OSError as exc:
            carried.release()
            log.warning("%s: cannot allocate ports for node %s: %s", self.name, node, exc)
            link.send(rw.Refused(f"no free ports: {exc}"))
            await link.drain()
            return
        self._carried[node] = carried
        self.stats.allocations += 1
        log.info(
            "%s: carrying node %s: gossip %s (udp+tcp), http %s",
            self.name, node, format_host_port(self.public_host, carried.gossip_port),
            format_host_port(self.public_host, carried.http_port),
        )
        link.send(rw.Allocated(self.public_host, carried.gossip_port, carried.http_port, lim.keepalive))
        reason = "closed"
        try:
            while True:
                try:
                    msg = await link.recv(lim.idle_timeout)
                except TimeoutError:
                    reason = f"silent for {lim.idle_timeout:.0f}s"
                    break
                except LinkClosed as exc:
                    reason = str(exc) or "closed"
                    break
                if isinstance(msg, rw.DgramOut):
                    carried.to_pool(msg)
                elif isinstance(msg, rw.Ping):
                    link.send(rw.Pong())
                else:
                    reason = f"unexpected {type(msg).__name__}"
                    break
        finally:
            if self._carried.get(node) is carried:
                del self._carried[node]
            carried.release()
            log.info("%s: stopped carrying node %s (%s)", self.name, node, reason)

    # ------------------------------------------------------------ allocations

    async def _allocate(self, carried: _Carried) -> None:
        loop = asyncio.get_running_loop()
        ports = self._candidate_ports()
        last: OSError | None = None
        for port in ports:
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpAllocation(carried), local_addr=(self.host, port), reuse_port=False
                )
            except OSError as exc:
                last = exc
                continue
            got = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(
                    lambda r, w: self._on_allocation(carried, "gossip", r, w), self.host, got, reuse_address=True
                )
            except OSError as exc:
                udp.close()
                last = exc
                continue
            carried.udp, carried.gossip_port = udp, got
            carried.tcp.append(tcp)
            break
        else:
            raise last or OSError("no port free for both UDP and TCP")
        for port in self._candidate_ports():
            if port and port == carried.gossip_port:
                continue
            try:
                http = await asyncio.start_server(
                    lambda r, w: self._on_allocation(carried, "http", r, w), self.host, port, reuse_address=True
                )
            except OSError as exc:
                last = exc
                continue
            carried.tcp.append(http)
            carried.http_port = int(http.sockets[0].getsockname()[1])
            return
        raise last or OSError("no port free for HTTP")

    def _candidate_ports(self) -> list[int]:
        if self.limits.port_range is None:
            return [0] * 16  # ephemeral: the kernel picks; retry when TCP has that number taken
        lo, hi = self.limits.port_range
        ports = list(range(lo + 1, hi + 1))
        self._rng.shuffle(ports)
        return ports

    async def _on_allocation(
        self, carried: _Carried, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if carried.closed or self._closing:
            writer.transport.abort()
            return
        task = self._spawn(self._relay_stream(carried, kind, reader, writer), f"relay-{kind}")
        await asyncio.wait([task])

    async def _relay_stream(
        self, carried: _Carried, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        if carried.active_streams >= self.limits.max_streams:
            carried.stats.streams_refused += 1
            carried.note(
                "streams", "%s: refused a %s stream from %s to node %s: %d streams open (max_streams)",
                self.name, kind, format_host_port(str(peer[0]), int(peer[1])), carried.node_id, carried.active_streams,
            )
            writer.transport.abort()
            return
        carried.active_streams += 1
        carried.stats.streams += 1
        sid = next(self._stream_ids)
        token = os.urandom(rw.TOKEN_BYTES)
        fut: asyncio.Future[_Attached] = asyncio.get_running_loop().create_future()
        carried.pending[sid] = (token, fut)
        try:
            carried.link.send(rw.Open(sid, kind, token, str(peer[0]), int(peer[1]) or 1))
            try:
                async with asyncio.timeout(self.limits.attach_timeout):
                    node_reader, node_writer, attached_done = await fut
            except TimeoutError:
                log.debug("%s: node %s did not attach %s stream %d", self.name, carried.node_id, kind, sid)
                writer.transport.abort()
                return

            def count(direction: str, n: int) -> None:
                if direction == "ab":
                    carried.stats.bytes_in += n
                else:
                    carried.stats.bytes_out += n

            try:
                await splice((reader, writer), (node_reader, node_writer), carried.inbound, carried.outbound, count)
            finally:
                if not attached_done.done():
                    attached_done.set_result(None)
        finally:
            carried.pending.pop(sid, None)
            carried.active_streams -= 1
            writer.close()

    async def _attach(self, msg: rw.Attach, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        carried = self._carried.get(msg.node_id)
        entry = carried.pending.pop(msg.stream_id, None) if carried is not None else None
        if entry is None or not hmac.compare_digest(entry[0], msg.token) or entry[1].done():
            self.stats.bad_attach += 1
            log.debug("%s: attach for unknown stream %d of node %s", self.name, msg.stream_id, msg.node_id)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry[1].set_result((reader, writer, done))
        # The splice runs in the allocation's task; this connection's task waits for it, so
        # close() (which cancels both) and asyncio's callback see one lifetime per socket.
        await done
