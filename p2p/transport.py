"""Datagram transports: the narrow interface the daemon moves gossip bytes through.

Mechanism. :class:`DatagramTransport` is all the daemon needs (STYLE item 10,
memberlist's ``transport.go``): ``send(data, addr)``, ``recv() -> (data,
addr)``, ``close()``, ``local_addr`` and a :class:`TransportStats`. It is
implemented by

- :class:`UdpTransport`, real UDP through asyncio-dgram;
- :class:`MemoryNetwork` ``.transport(addr)``, in-process delivery for tests,
  with a loss predicate and :class:`NoRoute` for unknown destinations (the
  simulator has its own link model and does not use this);
- :class:`SealedTransport`, a wrapper that seals every outgoing datagram and
  opens every incoming one with a :class:`~p2p.keyring.Sealer`.

The transports move opaque bytes; the membership codec and the keyring live
elsewhere.

Bounded intake. asyncio-dgram's own receive queue is unbounded and it
re-raises ICMP errors (port unreachable, ...) from the *next* ``recv`` or
``send`` (``asyncio_dgram/aio.py``). So :class:`UdpTransport` owns one reader
task that does nothing but move datagrams from asyncio-dgram into a bounded
``asyncio.Queue(maxsize)``: asyncio's selector transport reads one datagram
per readiness event and the reader is woken by each, so asyncio-dgram's
queue stays a few items long while *our* queue is where a flood backs up,
and there it is dropped and counted (``dropped_full``). Datagrams larger
than ``max_size`` are dropped and counted (``dropped_oversize``); OSErrors
surfacing from asyncio-dgram are counted (``errors``) and never end the
loop. ``send`` never raises for network conditions: pending ICMP errors are
drained and counted first so they cannot swallow this datagram, and a
failing send is counted. (UDP stays best effort: where the kernel itself
reports a pending error from ``sendto``, e.g. a connected socket or
IP_RECVERR, asyncio turns it into an error for later and that one datagram
is lost, like any other UDP loss.)

A peer never causes an exception here; only our own misuse does (sending
more than ``max_size`` bytes or to a host name instead of an IP literal
raises ``ValueError``: a local bug, STYLE item 6).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

import asyncio_dgram

from p2p.keyring import SEAL_OVERHEAD, SealError, Sealer

log = logging.getLogger(__name__)

Addr = tuple[str, int]

#: Largest compound datagram the membership layer builds (DESIGN: at most 1,400 bytes).
MAX_PAYLOAD = 1400
#: Default receive limit: a full payload, its seal, and slack for a future header.
DEFAULT_MAX_DATAGRAM = MAX_PAYLOAD + SEAL_OVERHEAD + 128
#: Default bound on datagrams received but not yet taken by ``recv()``.
DEFAULT_QUEUE_SIZE = 1024
#: Prefix of the associated data every sealed UDP payload is bound to (see :func:`udp_aad`).
UDP_AAD_PREFIX = b"rmap2p/udp/"
# ICMP errors drained before one send; bounded so a storm cannot stall a send.
_MAX_PENDING_ERRORS = 256


def udp_aad(cluster: str) -> bytes:
    """The one associated data of sealed gossip datagrams: ``b"rmap2p/udp/" + cluster``.

    The label keeps a sealed datagram from opening as a TCP frame
    (:func:`p2p.stream.stream_aad` starts ``rmap2p/tcp/``); the cluster name
    keeps two pools that share a key from accepting each other's datagrams.
    """
    return UDP_AAD_PREFIX + cluster.encode()


class TransportClosed(Exception):
    """``recv()`` on a transport that is closed (the receive loop should end)."""


class NoRoute(OSError):
    """MemoryNetwork: nothing is attached at ``addr`` (the in-memory "host unreachable")."""

    def __init__(self, addr: Addr) -> None:
        super().__init__(f"no route to {addr[0]}:{addr[1]}")
        self.addr = addr


@dataclass
class TransportStats:
    """Counters of one transport; plain ints, read them whenever.

    ``received``/``bytes_in`` count datagrams handed to the queue for ``recv()``;
    ``sent``/``bytes_out`` datagrams handed to the network.
    """

    received: int = 0
    sent: int = 0
    dropped_full: int = 0
    dropped_oversize: int = 0
    dropped_unauthenticated: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@runtime_checkable
class DatagramTransport(Protocol):
    """What the daemon needs to move datagrams."""

    stats: TransportStats

    @property
    def local_addr(self) -> Addr:
        """The (host, port) this transport receives on."""
        ...

    async def send(self, data: bytes, addr: Addr) -> None:
        """Send one datagram to ``addr`` (an IP literal and port). Best effort."""
        ...

    async def recv(self) -> tuple[bytes, Addr]:
        """The next datagram and its source; raises :class:`TransportClosed` once closed."""
        ...

    def close(self) -> None:
        """Stop receiving and release the socket; idempotent. Wakes pending ``recv()`` calls."""
        ...

    async def wait_closed(self) -> None:
        """After :meth:`close`, wait until the transport's own tasks have ended."""
        ...


class _BoundedInbox:
    """The bounded queue behind ``recv()`` with the close/wake-up logic both transports share."""

    def __init__(self, maxsize: int, stats: TransportStats) -> None:
        if maxsize < 1:
            raise ValueError("queue_size must be at least 1")
        # None is the close sentinel: it wakes every pending recv().
        self._queue: asyncio.Queue[tuple[bytes, Addr] | None] = asyncio.Queue(maxsize)
        self._stats = stats
        self.closed = False

    def offer(self, data: bytes, addr: Addr) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait((data, addr))
        except asyncio.QueueFull:
            self._stats.dropped_full += 1
            return
        self._stats.received += 1
        self._stats.bytes_in += len(data)

    def qsize(self) -> int:
        return 0 if self.closed else self._queue.qsize()

    async def get(self) -> tuple[bytes, Addr]:
        if self.closed:
            raise TransportClosed()
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # pass the sentinel on to the next waiter
            raise TransportClosed()
        return item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Anything still queued is discarded: nobody will process it.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)


def _normalise(addr: object) -> Addr:
    # IPv6 sockets report (host, port, flowinfo, scope_id); peers are (host, port).
    host, port = addr[0], addr[1]  # type: ignore[index]
    return (str(host), int(port))


def _check_ip_addr(addr: Addr) -> None:
    # A host name here would make the kernel resolve it synchronously inside
    # sendto(), blocking the event loop: names are resolved in p2p.discovery.
    try:
        host, port = addr
        ipaddress.ip_address(host.split("%", 1)[0])
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"destination must be (ip_literal, port), got {addr!r}") from None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"destination port out of range in {addr!r}")


class UdpTransport:
    """Real UDP via asyncio-dgram, with a bounded, counted intake.

    Create it with ``await UdpTransport.bind(host, port)``; the constructor
    does no I/O. Call :meth:`close` then ``await`` :meth:`wait_closed` (or
    use ``async with``) to stop the reader task.
    """

    def __init__(
        self,
        stream: asyncio_dgram.aio.DatagramServer,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_size: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        self.stats = TransportStats()
        self.max_size = max_size
        self._stream = stream
        self._inbox = _BoundedInbox(queue_size, self.stats)
        self._local_addr = _normalise(stream.sockname)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_size: int = DEFAULT_MAX_DATAGRAM,
    ) -> UdpTransport:
        """Bind ``host:port`` (port 0: any free port) and start the reader task."""
        stream = await asyncio_dgram.bind((host, port))
        return await cls.from_stream(stream, queue_size=queue_size, max_size=max_size)

    @classmethod
    async def from_stream(
        cls,
        stream: asyncio_dgram.aio.DatagramServer,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_size: int = DEFAULT_MAX_DATAGRAM,
    ) -> UdpTransport:
        """Wrap an already bound asyncio-dgram stream (custom socket options) and start reading."""
        transport = cls(stream, queue_size=queue_size, max_size=max_size)
        transport._start()
        return transport

    def _start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"udp-reader {self._local_addr[0]}:{self._local_addr[1]}"
        )
        self._reader.add_done_callback(self._reader_done)

    @property
    def local_addr(self) -> Addr:
        return self._local_addr

    @property
    def queued(self) -> int:
        """Datagrams waiting for ``recv()`` (at most ``queue_size``)."""
        return self._inbox.qsize()

    async def _read_loop(self) -> None:
        while True:
            try:
                data, addr = await self._stream.recv()
            except asyncio_dgram.TransportClosed:
                return
            except OSError as exc:
                # An ICMP error (e.g. port unreachable) from an earlier send,
                # re-raised by asyncio-dgram: it says nothing about this socket.
                self.stats.errors += 1
                log.debug("udp %s: socket error: %s", self._local_addr, exc)
                continue
            if len(data) > self.max_size:
                self.stats.dropped_oversize += 1
                log.debug("udp %s: dropped %d-byte datagram from %s", self._local_addr, len(data), addr)
                continue
            self._inbox.offer(data, _normalise(addr))

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        # However the reader ends, recv() must not wait forever.
        self._inbox.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("udp %s: reader task failed", self._local_addr, exc_info=task.exception())

    async def send(self, data: bytes, addr: Addr) -> None:
        """Send ``data`` to ``addr``; network errors are counted, never raised."""
        if len(data) > self.max_size:
            raise ValueError(f"datagram of {len(data)} bytes exceeds max_size {self.max_size}")
        _check_ip_addr(addr)
        if self._inbox.closed:
            self.stats.errors += 1
            return
        self._drain_pending_errors()
        try:
            await self._stream.send(data, addr)
        except (OSError, asyncio_dgram.TransportClosed) as exc:
            self.stats.errors += 1
            log.debug("udp %s: send to %s failed: %s", self._local_addr, addr, exc)
            return
        self.stats.sent += 1
        self.stats.bytes_out += len(data)

    def _drain_pending_errors(self) -> None:
        # asyncio-dgram raises a queued ICMP error from send() *before*
        # sending, which would lose this datagram for an unrelated failure.
        for _ in range(_MAX_PENDING_ERRORS):
            try:
                _ = self._stream.exception
            except OSError as exc:
                self.stats.errors += 1
                log.debug("udp %s: socket error: %s", self._local_addr, exc)
                continue
            return

    async def recv(self) -> tuple[bytes, Addr]:
        return await self._inbox.get()

    def close(self) -> None:
        self._inbox.close()
        self._stream.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def wait_closed(self) -> None:
        """Await the reader task after :meth:`close` (STYLE 12: cancel, then await)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            # asyncio.wait rather than awaiting under suppress(CancelledError):
            # a cancellation of *our* caller must still propagate.
            await asyncio.wait([reader])

    async def __aenter__(self) -> UdpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


LossPredicate = Callable[[bytes, Addr, Addr], bool]


class MemoryNetwork:
    """In-process datagram network for tests: ``net.transport(addr)`` attaches an endpoint.

    ``loss(data, src, dst) -> True`` drops a datagram (counted in
    ``dropped_loss``); pass a predicate built on the test's own seeded
    ``random.Random`` for reproducible loss, or one that inspects addresses
    for partitions. Delivery is immediate and in order. Sending to an address
    with nothing attached raises :class:`NoRoute`.
    """

    def __init__(
        self,
        loss: LossPredicate | None = None,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_size: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        self.loss = loss
        self.queue_size = queue_size
        self.max_size = max_size
        self.dropped_loss = 0
        self._endpoints: dict[Addr, MemoryTransport] = {}
        self._ports = itertools.count(40000)

    def transport(self, addr: Addr) -> MemoryTransport:
        """Attach an endpoint at ``addr``; port 0 picks an unused port."""
        host, port = addr
        if port == 0:
            port = next(p for p in self._ports if (host, p) not in self._endpoints)
        key = (host, port)
        if key in self._endpoints:
            raise ValueError(f"address {host}:{port} is already attached")
        endpoint = MemoryTransport(self, key, self.queue_size, self.max_size)
        self._endpoints[key] = endpoint
        return endpoint

    def _detach(self, addr: Addr) -> None:
        self._endpoints.pop(addr, None)

    def _deliver(self, data: bytes, src: Addr, dst: Addr) -> None:
        endpoint = self._endpoints.get(dst)
        if endpoint is None:
            raise NoRoute(dst)
        if self.loss is not None and self.loss(data, src, dst):
            self.dropped_loss += 1
            return
        endpoint._arrive(data, src)


class MemoryTransport:
    """One endpoint on a :class:`MemoryNetwork`; same contract as :class:`UdpTransport`."""

    def __init__(self, network: MemoryNetwork, addr: Addr, queue_size: int, max_size: int) -> None:
        self.stats = TransportStats()
        self.max_size = max_size
        self._network = network
        self._addr = addr
        self._inbox = _BoundedInbox(queue_size, self.stats)

    @property
    def local_addr(self) -> Addr:
        return self._addr

    async def send(self, data: bytes, addr: Addr) -> None:
        """Deliver ``data`` to the endpoint at ``addr``; raises :class:`NoRoute` if none."""
        if len(data) > self.max_size:
            raise ValueError(f"datagram of {len(data)} bytes exceeds max_size {self.max_size}")
        if self._inbox.closed:
            self.stats.errors += 1
            return
        try:
            self._network._deliver(bytes(data), self._addr, addr)
        except NoRoute:
            self.stats.errors += 1
            raise
        self.stats.sent += 1
        self.stats.bytes_out += len(data)

    def _arrive(self, data: bytes, src: Addr) -> None:
        if len(data) > self.max_size:
            self.stats.dropped_oversize += 1
            return
        self._inbox.offer(data, src)

    async def recv(self) -> tuple[bytes, Addr]:
        return await self._inbox.get()

    def close(self) -> None:
        self._inbox.close()
        self._network._detach(self._addr)

    async def wait_closed(self) -> None:
        """Nothing to await (no task); present so callers treat both transports alike."""


class SealedTransport:
    """Seals what it sends and opens what it receives; unauthenticated datagrams are dropped.

    Wraps any :class:`DatagramTransport`. ``stats`` is the inner transport's,
    with unopenable datagrams counted in ``dropped_unauthenticated``. The
    sealer may be a live :class:`~p2p.keyring.Keyring`: rotation takes effect
    on the next datagram. Every payload is bound to :func:`udp_aad` of
    ``cluster``.
    """

    def __init__(
        self,
        inner: DatagramTransport,
        sealer: Sealer,
        *,
        cluster: str,
        on_unauthenticated: Callable[[Addr], None] | None = None,
    ) -> None:
        self.on_unauthenticated = on_unauthenticated
        """Told the source of each datagram that failed authentication (the daemon logs it, rate-limited)."""
        self.inner = inner
        self.stats = inner.stats
        self.sealer = sealer
        self.aad = udp_aad(cluster)

    @property
    def local_addr(self) -> Addr:
        return self.inner.local_addr

    async def send(self, data: bytes, addr: Addr) -> None:
        await self.inner.send(self.sealer.seal(data, self.aad), addr)

    async def recv(self) -> tuple[bytes, Addr]:
        while True:
            data, addr = await self.inner.recv()
            try:
                return self.sealer.open(data, self.aad), addr
            except SealError as exc:
                self.stats.dropped_unauthenticated += 1
                log.debug("dropped unauthenticated datagram from %s: %s", addr, exc)
                if self.on_unauthenticated is not None:
                    self.on_unauthenticated(addr)

    def close(self) -> None:
        self.inner.close()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()
