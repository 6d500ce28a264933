"""The relayed node's end of a relay: one control connection, its streams, and the datagram path.

:class:`RelayClient` holds one control connection to one relay
(:mod:`p2p.relay_server` explains the protocol): ``await connect()`` says
hello and returns the :class:`~p2p.relay_wire.Allocated` ports; ``await
run()`` then reads the connection until it ends and returns why (closed,
refused, or keepalives missed: nothing heard for ``dead_after`` seconds while
pinging every ``keepalive``). Datagrams arriving at the allocation go to
``on_datagram(data, src)``; each stream the relay opens is attached on a
fresh connection and handed to ``on_stream(kind, reader, writer, peer)``,
which owns it from then on.

:class:`RelayedDatagrams` is the daemon's datagram transport when it may be
relayed: it wraps the node's own UDP socket and, while a relay is ``route``,
sends every datagram through it (so peers see the allocation as the one
address of this node) and merges what arrives through any relay with what
arrives on the socket. With no route (before the first allocation, or for the
moment between a relay's death and the switch to the standby) it sends
directly: a NAT still lets replies to our own pings back in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from p2p import relay_wire as rw
from p2p.discovery import format_host_port
from p2p.keyring import NullSealer, Sealer
from p2p.relay_link import FrameLink, LinkClosed
from p2p.transport import (
    DEFAULT_QUEUE_SIZE,
    DatagramTransport,
    TransportClosed,
    TransportStats,
    _BoundedInbox,
)

log = logging.getLogger(__name__)

Addr = tuple[str, int]
StreamHandler = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter, Addr], Awaitable[None]]


class RelayError(Exception):
    """The relay could not be reached, refused us, or broke the protocol."""


class HelloSigner(Protocol):
    """What RelayClient needs of :class:`p2p.identity.NodeIdentity`."""

    @property
    def node_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, payload: bytes) -> bytes: ...


class RelayClient:
    def __init__(
        self,
        relay: Addr,
        relay_node: str,
        identity: HelloSigner,
        on_datagram: Callable[[bytes, Addr], None],
        on_stream: StreamHandler,
        sealer: Sealer | None = None,
        *,
        cluster: str = "rmap2p",
        keepalive: float = 0.5,
        dead_after: float = 2.0,
        connect_timeout: float = 5.0,
        max_backlog: int = 256 * 1024,
    ) -> None:
        self.relay = relay
        self.relay_node = relay_node
        """The relay's node id ("" when not known: a seed found before joining)."""
        self.identity = identity
        self.on_datagram = on_datagram
        self.on_stream = on_stream
        self.sealer: Sealer = sealer if sealer is not None else NullSealer()
        self.cluster = cluster
        self.aad = rw.relay_aad(cluster)
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.connect_timeout = connect_timeout
        self.max_backlog = max_backlog
        self.allocation: rw.Allocated | None = None
        self.dropped_backlog = 0
        self._link: FrameLink | None = None
        self._streams: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def gossip_addr(self) -> Addr:
        assert self.allocation is not None
        return (self.allocation.host, self.allocation.gossip_port)

    @property
    def http_addr(self) -> str:
        assert self.allocation is not None
        return format_host_port(self.allocation.host, self.allocation.http_port)

    @property
    def bytes(self) -> tuple[int, int]:
        """(in, out) bytes on the control connection so far."""
        return (self._link.bytes_in, self._link.bytes_out) if self._link is not None else (0, 0)

    async def connect(self) -> rw.Allocated:
        """Open the control connection and say hello; raises :class:`RelayError`."""
        where = format_host_port(*self.relay)
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*self.relay)
                link = FrameLink(reader, writer, self.sealer, self.aad)
                link.send(rw.Control())
                challenge = await link.recv()
                if not isinstance(challenge, rw.Challenge):
                    link.close()
                    raise RelayError(f"relay {where}: expected a challenge, got {type(challenge).__name__}")
                signature = self.identity.sign(rw.hello_payload(self.cluster, challenge.nonce))
                link.send(rw.Hello(self.identity.node_id, bytes(self.identity.public_key), signature))
                answer = await link.recv()
        except TimeoutError:
            raise RelayError(f"relay {where}: no answer within {self.connect_timeout}s") from None
        except (OSError, LinkClosed) as exc:
            raise RelayError(f"relay {where}: {exc}") from None
        if isinstance(answer, rw.Refused):
            link.close()
            raise RelayError(f"relay {where} refused: {answer.reason}")
        if not isinstance(answer, rw.Allocated):
            link.close()
            raise RelayError(f"relay {where}: expected an allocation, got {type(answer).__name__}")
        self._link = link
        self.allocation = answer
        return answer

    async def run(self) -> str:
        """Serve the connection until it ends; returns the reason. Cancelling closes everything."""
        link = self._link
        if link is None:
            raise RuntimeError("connect() first")
        keepalive = min(self.keepalive, self.allocation.keepalive if self.allocation else self.keepalive)
        pinger = asyncio.get_running_loop().create_task(self._ping(link, keepalive), name="relay-ping")
        try:
            while True:
                try:
                    msg = await link.recv(self.dead_after)
                except TimeoutError:
                    return f"nothing heard for {self.dead_after:.1f}s (keepalives missed)"
                except LinkClosed as exc:
                    return f"connection lost ({exc})"
                if isinstance(msg, rw.DgramIn):
                    try:
                        self.on_datagram(msg.data, (msg.host, msg.port))
                    except Exception:
                        log.exception("relay %s: datagram handler failed", format_host_port(*self.relay))
                elif isinstance(msg, rw.Open):
                    task = asyncio.get_running_loop().create_task(self._attach(msg), name=f"relay-attach {msg.kind}")
                    self._streams.add(task)
                    task.add_done_callback(self._streams.discard)
                elif isinstance(msg, rw.Pong):
                    pass
                else:
                    return f"unexpected {type(msg).__name__} from the relay"
        finally:
            pinger.cancel()
            await asyncio.wait([pinger])
            self.close()

    async def _ping(self, link: FrameLink, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            link.send(rw.Ping())

    async def _attach(self, msg: rw.Open) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*self.relay)
                link = FrameLink(reader, writer, self.sealer, self.aad)
                link.send(rw.Attach(self.identity.node_id, msg.stream_id, msg.token))
                await link.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("relay %s: cannot attach stream %d: %s", format_host_port(*self.relay), msg.stream_id, exc)
            return
        try:
            await self.on_stream(msg.kind, reader, writer, (msg.host, msg.port))
        except Exception:
            log.exception("relay %s: %s stream handler failed", format_host_port(*self.relay), msg.kind)
        finally:
            writer.close()

    def send_datagram(self, data: bytes, addr: Addr) -> bool:
        """Have the relay send ``data`` to ``addr`` from our allocation; False when dropped."""
        link = self._link
        if link is None or self._closed:
            return False
        if link.backlog > self.max_backlog:
            self.dropped_backlog += 1
            return False
        link.send(rw.DgramOut(addr[0], addr[1], data))
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Drop the control connection (the relay frees the allocation) and every attached stream."""
        self._closed = True
        if self._link is not None:
            self._link.close()
        for task in list(self._streams):
            task.cancel()

    async def wait_streams(self) -> None:
        if self._streams:
            await asyncio.wait(list(self._streams))


class RelayedDatagrams:
    """A :class:`~p2p.transport.DatagramTransport` that sends through ``route`` when one is set."""

    def __init__(self, inner: DatagramTransport, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.inner = inner
        self.stats = TransportStats()
        self.route: RelayClient | None = None
        self.relayed_out = 0
        self.relayed_in = 0
        self._inbox = _BoundedInbox(queue_size, self.stats)
        self._pump: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._pump_inner(), name="udp-merge")

    @property
    def local_addr(self) -> Addr:
        return self.inner.local_addr

    async def _pump_inner(self) -> None:
        while True:
            try:
                data, addr = await self.inner.recv()
            except TransportClosed:
                self._inbox.close()
                return
            self._inbox.offer(data, addr)

    def deliver(self, data: bytes, src: Addr) -> None:
        """A datagram that arrived at one of our relay allocations (any relay: the standby's too)."""
        self.relayed_in += 1
        self._inbox.offer(data, src)

    async def send(self, data: bytes, addr: Addr) -> None:
        route = self.route
        if route is not None and not route.closed:
            if route.send_datagram(data, addr):
                self.relayed_out += 1
                self.stats.sent += 1
                self.stats.bytes_out += len(data)
            else:
                self.stats.errors += 1
            return
        await self.inner.send(data, addr)
        self.stats.sent += 1
        self.stats.bytes_out += len(data)

    async def recv(self) -> tuple[bytes, Addr]:
        return await self._inbox.get()

    def close(self) -> None:
        self._inbox.close()
        self.inner.close()
        if self._pump is not None:
            self._pump.cancel()

    async def wait_closed(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            await asyncio.wait([pump])
        await self.inner.wait_closed()
