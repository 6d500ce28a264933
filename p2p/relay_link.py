"""What the relay server and its client share: a sealed message link, and the byte splice.

:class:`FrameLink` sends and receives :mod:`p2p.relay_wire` messages as
:mod:`p2p.stream` frames sealed under :func:`~p2p.relay_wire.relay_aad`
(plain with a ``NullSealer``). Sending is synchronous (``writer.write``):
both ends are single event loops, so one frame is never interleaved with
another, and the caller decides what to do when the peer reads too slowly
(:attr:`FrameLink.backlog`): datagrams are dropped, like any congested UDP path.

:func:`splice` copies bytes both ways between two connections until both
directions have ended, half-closing each side as its source ends (HTTP
clients that send EOF after the request still get their answer). Each
direction is paced by a :class:`~p2p.byte_bucket.ByteBucket` and awaits
``drain()``, so a slow receiver stops the reading side: memory per stream
stays at one chunk plus the socket buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from p2p import relay_wire as rw
from p2p.byte_bucket import ByteBucket
from p2p.keyring import Sealer, SealError
from p2p.stream import StreamError, encode_frame, read_frame

MAX_FRAME = rw.MAX_DATAGRAM + 1024
CHUNK = 64 * 1024


class LinkClosed(Exception):
    """The other end closed the link, or sent something that is not a valid relay frame."""


class FrameLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sealer: Sealer, aad: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.sealer = sealer
        self.aad = aad
        self.bytes_in = 0
        self.bytes_out = 0

    async def recv(self, timeout: float | None = None) -> rw.Message:
        """The next message; raises :class:`LinkClosed` (closed, bad frame) or ``TimeoutError``."""
        try:
            async with asyncio.timeout(timeout):
                frame = await read_frame(self.reader, MAX_FRAME)
        except TimeoutError:
            raise
        except (asyncio.IncompleteReadError, OSError, ValueError) as exc:
            raise LinkClosed(str(exc) or type(exc).__name__) from None
        except StreamError as exc:  # FrameTooLarge: the peer's fault
            raise LinkClosed(str(exc)) from None
        self.bytes_in += len(frame) + 4
        try:
            return rw.decode(self.sealer.open(frame, self.aad))
        except SealError as exc:
            raise LinkClosed(f"frame failed authentication ({exc}): a different keyring or cluster?") from None
        except rw.RelayProtocolError as exc:
            raise LinkClosed(str(exc)) from None

    def send(self, msg: rw.Message) -> None:
        """Queue ``msg`` for the peer (never blocks; see :attr:`backlog`)."""
        if self.writer.is_closing():
            return
        frame = encode_frame(self.sealer.seal(rw.encode(msg), self.aad))
        self.bytes_out += len(frame)
        self.writer.write(frame)

    async def drain(self) -> None:
        with contextlib.suppress(OSError):
            await self.writer.drain()

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the kernel (the peer is slow, or gone)."""
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def close(self) -> None:
        self.writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    a_to_b: ByteBucket | None = None,
    b_to_a: ByteBucket | None = None,
    count: Callable[[str, int], None] | None = None,
) -> None:
    """Copy a→b and b→a until both directions end; closes both writers at the end.

    ``count(direction, n)`` is told every chunk (``"ab"`` or ``"ba"``).
    """
    loop = asyncio.get_running_loop()

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, bucket: ByteBucket | None, tag: str) -> None:
        try:
            while True:
                chunk = await src.read(CHUNK)
                if not chunk:
                    break
                if bucket is not None:
                    wait = bucket.reserve(len(chunk), loop.time())
                    if wait > 0:
                        await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()
                if count is not None:
                    count(tag, len(chunk))
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
        except OSError:
            # A reset on either side ends the whole splice: the other direction has no future.
            a[1].transport.abort()
            b[1].transport.abort()

    try:
        await asyncio.gather(pump(a[0], b[1], a_to_b, "ab"), pump(b[0], a[1], b_to_a, "ba"))
    finally:
        a[1].close()
        b[1].close()
