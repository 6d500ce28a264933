"""A minimal Redis client (RESP2 over asyncio streams): what the runner and the tests need.

The daemon talks to its own redis-server to check health, change roles
(``REPLICAOF``) and read ``INFO replication``; pulling in redis-py for that
would make a storage extra mandatory. Replies are bounded: a bulk string or
array larger than ``MAX_REPLY`` is a protocol error, not an allocation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

MAX_REPLY = 64 * 1024 * 1024
MAX_ITEMS = 1_000_000

Reply = str | int | bytes | None | list["Reply"]


class RespError(Exception):
    """The server answered with an error (``-ERR ...``); the message is its text."""


class RespProtocolError(ValueError):
    """The bytes from the server are not RESP2 (or exceed our bounds)."""


def encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        if n > MAX_REPLY:
            raise RespProtocolError(f"bulk reply of {n} bytes")
        data = await reader.readexactly(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        if n > MAX_ITEMS:
            raise RespProtocolError(f"array reply of {n} items")
        items: list[Reply] = []
        for _ in range(n):
            try:
                items.append(await read_reply(reader))
            except RespError as exc:  # an error inside an array (EXEC) is an item
                items.append(str(exc))
        return items
    raise RespProtocolError(f"unexpected reply type {kind!r}")


class RespClient:
    """One connection; ``command()`` sends one command and returns its reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, password: str | None = None, timeout: float = 2.0) -> RespClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer)
        if password is not None:
            try:
                await asyncio.wait_for(client.command("AUTH", password), timeout)
            except BaseException:
                await client.close()
                raise
        return client

    async def command(self, *args: str | bytes | int) -> Reply:
        self._writer.write(encode(args))
        await self._writer.drain()
        return await read_reply(self._reader)

    async def pipeline(self, commands: Sequence[Sequence[str | bytes | int]]) -> list[Reply | RespError]:
        """Send all ``commands`` at once, then read their replies in order (errors as values)."""
        self._writer.write(b"".join(encode(c) for c in commands))
        await self._writer.drain()
        replies: list[Reply | RespError] = []
        for _ in commands:
            try:
                replies.append(await read_reply(self._reader))
            except RespError as exc:
                replies.append(exc)
        return replies

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def parse_info(text: str | bytes) -> dict[str, str]:
    """``INFO``'s ``key:value`` lines as a dict (section headers and blanks skipped)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out
