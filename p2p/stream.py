"""TCP request/response frames for push-pull anti-entropy.

Mechanism. The TCP listener shares the gossip port *number* with UDP (as
memberlist does), so one ``host:port`` names a node. Each connection carries
one exchange: the client sends one frame, the server's handler may answer
with one frame, and both sides close. A frame is::

    +-------------------------+------------------------------+
    | length: uint32 big-end. | sealed payload (length bytes)|
    +-------------------------+------------------------------+

where the payload is sealed with the cluster :class:`~p2p.keyring.Sealer`
(associated data: the daemon passes :func:`stream_aad` of its cluster, so a
sealed UDP datagram cannot be replayed as a frame and two pools sharing a key
do not mix; the default :data:`STREAM_AAD` serves standalone use) and
``length`` covers the sealed bytes.

Limits (STYLE item 7). The announced length is checked against ``max_frame``
(default 4 MiB) *before* the body is read, and the body is read with
``readexactly`` whose buffer only grows with bytes actually received: a peer's
number never sizes an allocation. Each connection has ``read_timeout`` for
reading its frame, the same bound for the handler and again for writing the
reply, so a slow or silent peer holds a slot for a bounded time. At most
``max_connections`` connections are served at once; the rest are closed on
accept and counted.

A frame that fails authentication is answered with one *unsealed* frame,
``AUTH_REFUSED``, before the connection closes: the sender learns that the
peer is there but cannot read it (a different keyring or cluster name),
instead of seeing a silent close. The marker carries nothing secret and
proves nothing; at worst a forger makes a node log that it was refused.

Every malformed, truncated, oversized, unauthenticated or timed-out frame is
dropped and counted in :class:`StreamStats` and the connection closed; a
handler exception is logged and counted. Nothing a peer sends raises into the
event loop. The server owns its connection tasks: :meth:`StreamServer.close`
cancels them and waits for them (STYLE item 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from types import TracebackType

from p2p.discovery import format_host_port
from p2p.keyring import NullSealer, SealError, Sealer

log = logging.getLogger(__name__)

Addr = tuple[str, int]
Handler = Callable[[bytes, Addr], Awaitable[bytes | None]]

#: Default largest sealed frame accepted or sent.
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_READ_TIMEOUT = 10.0
#: Associated data bound into sealed frames when the caller names no cluster.
STREAM_AAD = b"rmap2p/tcp"
#: Prefix of the associated data of a cluster's frames (see :func:`stream_aad`).
STREAM_AAD_PREFIX = b"rmap2p/tcp/"
#: The unsealed reply to a frame that failed authentication (see the module docstring).
AUTH_REFUSED = b"rmap2p/auth-refused/1"
HEADER = struct.Struct(">I")
#: Bytes of framing per frame (the length prefix).
HEADER_BYTES = HEADER.size


def stream_aad(cluster: str) -> bytes:
    """Associated data of a cluster's push-pull frames: ``b"rmap2p/tcp/" + cluster``.

    Differs from :func:`p2p.transport.udp_aad` in its label for every cluster name.
    """
    return STREAM_AAD_PREFIX + cluster.encode()


class StreamError(Exception):
    """A client request failed: connection, timeout, oversized or unauthenticated reply."""


class AuthRefused(StreamError):
    """The peer answered that it could not authenticate our frame (a different keyring or cluster?)."""


class FrameTooLarge(StreamError):
    """A frame announced (or would need) more than ``max_frame`` bytes."""

    def __init__(self, length: int, max_frame: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the {max_frame}-byte limit")
        self.length = length
        self.max_frame = max_frame


@dataclass
class StreamStats:
    """Counters of one :class:`StreamServer`."""

    accepted: int = 0
    rejected_busy: int = 0
    frames_in: int = 0
    frames_out: int = 0
    dropped_oversize: int = 0
    dropped_malformed: int = 0
    dropped_unauthenticated: int = 0
    timeouts: int = 0
    handler_errors: int = 0
    write_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def encode_frame(payload: bytes) -> bytes:
    """Length prefix + ``payload`` (already sealed)."""
    return HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_frame: int) -> bytes:
    """Read one frame; raises :class:`FrameTooLarge` before reading an oversized body.

    A connection that ends early raises ``asyncio.IncompleteReadError``.
    """
    header = await reader.readexactly(HEADER_BYTES)
    (length,) = HEADER.unpack(header)
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)
    return await reader.readexactly(length)


def _peer(writer: asyncio.StreamWriter) -> Addr:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return ("?", 0)


class StreamServer:
    """Serves one-frame exchanges: ``handler(payload, peer) -> reply | None``.

    The constructor does no I/O; ``await start()`` listens, ``await close()``
    stops listening and ends every connection. Use the UDP transport's port
    here so both share one number (port 0 picks any, for tests).
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        sealer: Sealer | None = None,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        aad: bytes = STREAM_AAD,
        on_unauthenticated: Callable[[Addr], None] | None = None,
    ) -> None:
        if max_frame < 1 or max_frame > 0xFFFFFFFF:
            raise ValueError("max_frame must be in 1 .. 2**32-1")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if read_timeout <= 0:
            raise ValueError("read_timeout must be positive")
        self.host = host
        self.port = port
        self.handler = handler
        self.sealer: Sealer = sealer if sealer is not None else NullSealer()
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.aad = aad
        self.on_unauthenticated = on_unauthenticated
        """Told the peer of each frame that failed authentication (the daemon logs it, rate-limited)."""
        self.stats = StreamStats()
        self._server: asyncio.Server | None = None
        # asyncio's per-connection callback task -> our inner task serving it.
        self._connections: dict[asyncio.Task[object], asyncio.Task[None]] = {}
        self._closing = False

    async def start(self) -> None:
        """Listen on ``host:port``; raises ``OSError`` if the port is taken."""
        if self._server is not None:
            raise RuntimeError("StreamServer already started")
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, reuse_address=True
        )

    @property
    def local_addr(self) -> Addr:
        """The address actually bound (after :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("StreamServer is not listening")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening, cancel every connection task and wait for them."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for inner in self._connections.values():
            inner.cancel()
        outers = list(self._connections)
        if outers:
            # Each outer task ends once its inner one has. asyncio.wait rather
            # than gather under suppress(CancelledError): a cancellation of
            # our own caller must still propagate (STYLE 12).
            await asyncio.wait(outers)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> StreamServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Addr) -> None:
        """Serve one exchange on a connection accepted elsewhere (a relay's attached stream).

        ``peer`` is the real remote end as the relay saw it. The caller's task owns the
        connection (the relay bounds how many it opens); the writer is closed at the end.
        """
        self.stats.accepted += 1
        try:
            await self._serve(reader, writer, peer)
        finally:
            writer.close()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs this callback in a task of its own; on Python 3.11 that
        # task must not end cancelled (its done-callback calls task.exception()
        # and logs a spurious error). So the exchange runs in an inner task we
        # own and cancel on close(), and this outer task just waits for it.
        if self._closing or len(self._connections) >= self.max_connections:
            self.stats.rejected_busy += 1
            writer.transport.abort()
            return
        outer = asyncio.current_task()
        assert outer is not None
        peer = _peer(writer)
        inner = asyncio.get_running_loop().create_task(
            self._serve(reader, writer, peer), name=f"tcp-conn {format_host_port(*peer)}"
        )
        self._connections[outer] = inner
        self.stats.accepted += 1
        try:
            await asyncio.wait([inner])
        except asyncio.CancelledError:
            inner.cancel()
            raise
        finally:
            del self._connections[outer]
            writer.close()
        if not inner.cancelled() and inner.exception() is not None:
            # _serve catches everything a peer can cause; this is a bug of ours.
            log.error("tcp from %s: connection failed", peer, exc_info=inner.exception())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Addr) -> None:
        try:
            async with asyncio.timeout(self.read_timeout):
                frame = await read_frame(reader, self.max_frame)
        except FrameTooLarge as exc:
            self.stats.dropped_oversize += 1
            log.debug("tcp from %s: %s", peer, exc)
            return
        except TimeoutError:
            self.stats.timeouts += 1
            log.debug("tcp from %s: no complete frame within %.1fs", peer, self.read_timeout)
            return
        except (asyncio.IncompleteReadError, OSError) as exc:
            self.stats.dropped_malformed += 1
            log.debug("tcp from %s: truncated frame: %s", peer, exc)
            return
        self.stats.frames_in += 1
        self.stats.bytes_in += HEADER_BYTES + len(frame)
        try:
            payload = self.sealer.open(frame, self.aad)
        except SealError as exc:
            self.stats.dropped_unauthenticated += 1
            log.debug("tcp from %s: dropped frame: %s", peer, exc)
            if self.on_unauthenticated is not None:
                self.on_unauthenticated(peer)
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self.read_timeout):
                    writer.write(encode_frame(AUTH_REFUSED))
                    await writer.drain()
            return

        try:
            async with asyncio.timeout(self.read_timeout):
                reply = await self.handler(payload, peer)
        except TimeoutError:
            self.stats.handler_errors += 1
            log.warning("tcp from %s: handler did not finish within %.1fs", peer, self.read_timeout)
            return
        except Exception:
            self.stats.handler_errors += 1
            log.exception("tcp from %s: handler failed", peer)
            return
        if reply is None:
            return

        try:
            sealed = self.sealer.seal(reply, self.aad)
        except (TypeError, ValueError):
            # The handler returned something that is not bytes: our bug, logged loudly.
            self.stats.handler_errors += 1
            log.exception("tcp to %s: cannot seal the handler's reply", peer)
            return
        if len(sealed) > self.max_frame:
            # Our own handler built too much: a local bug, not the peer's fault.
            self.stats.handler_errors += 1
            log.error("tcp to %s: reply of %d bytes exceeds max_frame %d", peer, len(sealed), self.max_frame)
            return
        try:
            async with asyncio.timeout(self.read_timeout):
                writer.write(encode_frame(sealed))
                await writer.drain()
        except TimeoutError:
            self.stats.timeouts += 1
            return
        except OSError as exc:
            self.stats.write_errors += 1
            log.debug("tcp to %s: reply failed: %s", peer, exc)
            return
        self.stats.frames_out += 1
        self.stats.bytes_out += HEADER_BYTES + len(sealed)


async def request(
    addr: Addr,
    payload: bytes,
    sealer: Sealer | None = None,
    timeout: float = DEFAULT_READ_TIMEOUT,
    expect_reply: bool = True,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    aad: bytes = STREAM_AAD,
) -> bytes | None:
    """Send one sealed frame to ``addr`` and, if ``expect_reply``, return the opened reply.

    ``timeout`` bounds the whole exchange (connect, send, reply). Returns
    None when no reply is expected. Raises :class:`StreamError` on any
    failure: refused or reset connection, timeout, no reply, an oversized or
    unauthenticated reply, or a payload too large to send.
    """
    sealer = sealer if sealer is not None else NullSealer()
    sealed = sealer.seal(payload, aad)
    if len(sealed) > max_frame:
        raise FrameTooLarge(len(sealed), max_frame)
    host, port = addr
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(encode_frame(sealed))
            await writer.drain()
            if not expect_reply:
                return None
            frame = await read_frame(reader, max_frame)
    except TimeoutError:
        raise StreamError(f"{format_host_port(host, port)}: no reply within {timeout}s") from None
    except FrameTooLarge as exc:
        raise StreamError(f"{format_host_port(host, port)}: {exc}") from None
    except asyncio.IncompleteReadError:
        raise StreamError(f"{format_host_port(host, port)}: connection closed without a complete reply") from None
    except OSError as exc:
        raise StreamError(f"{format_host_port(host, port)}: {exc.strerror or exc}") from exc
    finally:
        if writer is not None:
            writer.close()
    if frame == AUTH_REFUSED:
        raise AuthRefused(f"{format_host_port(host, port)} cannot authenticate our frames: a different keyring or cluster name?")
    try:
        return sealer.open(frame, aad)
    except SealError as exc:
        raise StreamError(f"{format_host_port(host, port)}: reply failed authentication: {exc}") from None
