"""Forward a local TCP port to the current primary of a stateful service, switching on failover.

With ``--service-proxy`` every node listens on each stateful service's
standard port (6379 for redis, 5432 for postgres) and pipes each accepted
connection to wherever that service's primary is now, so applications keep
``REDIS_HOST=localhost`` as in the seeds while the primary moves.

- The manager calls ``set_target(endpoint)`` whenever the view names a new
  primary (``allocator.replicas.primary_of``), ``None`` while there is none
  or while its engine still reports itself a replica (a write would fail
  ``READONLY``; ``services.stateful_manager.ServiceProxies``).
- A connection accepted while there is no primary, or whose connect to the
  primary fails (refused, timed out: the primary died and the view does not
  say so yet), is held, like the gateway holds a request: nothing of it has
  reached any copy yet, so it waits for the view to name a primary (or a new
  one), retries a primary that failed every ``RETRY_AFTER`` seconds (it may
  have restarted), and is closed only after ``wait_for_primary`` seconds in
  all. A failed connect is reported (``on_unreachable``) so that membership
  probes that node at once.
- When the target changes, every connection to the old target is closed:
  a client must not keep writing to a copy that has become a replica (or
  is gone); it reconnects and reaches the new primary.
- Bounded: at most ``max_connections`` at once (more are closed at once,
  logged at most every 10 s), each direction moves at most ``CHUNK`` bytes
  per read and waits for the other side to drain (no unbounded buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from collections.abc import Callable

from services.stateful import Endpoint

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
REFUSAL_LOG_INTERVAL = 10.0
RETRY_AFTER = 1.0
"""Seconds before a held connection tries again a primary it could not reach (unless the target changes first)."""


class ServiceProxy:
    def __init__(
        self,
        service: str,
        host: str,
        port: int,
        *,
        node_id: str = "",
        max_connections: int = 256,
        connect_timeout: float = 3.0,
        wait_for_primary: float = 15.0,
        on_unreachable: Callable[[Endpoint], None] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.service = service
        self._host = host
        self._want_port = port
        self._node_id = node_id
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._wait_for_primary = wait_for_primary
        self._target: Endpoint | None = None
        self._target_set = asyncio.Event()
        self._retargeted = asyncio.Event()  # replaced on every change: wakes the connections held
        self._on_unreachable = on_unreachable
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], Endpoint | None] = {}
        self._last_refusal_log = 0.0
        self.refused = 0
        self.forwarded = 0
        self.held = 0
        """Connections that waited for a primary (none, or one that could not be reached) before being forwarded or closed."""

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def target(self) -> Endpoint | None:
        return self._target

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, self._want_port)
        log.info("node %s: %s proxy listening on %s:%s", self._node_id, self.service, self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def set_target(self, target: Endpoint | None) -> None:
        """Forward new connections to ``target``; close those to any other target."""
        if target == self._target:
            return
        log.info("node %s: %s proxy now forwards to %s (was %s)", self._node_id, self.service, target or "nothing", self._target or "nothing")
        self._target = target
        if target is None:
            self._target_set.clear()
        else:
            self._target_set.set()
        self._retargeted.set()
        self._retargeted = asyncio.Event()
        for task, upstream in list(self._conns.items()):
            if upstream is not None and upstream != target:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self._max:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
                self._last_refusal_log = now
                log.warning("node %s: %s proxy at its limit of %d connections; refusing (%d so far)", self._node_id, self.service, self._max, self.refused)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = None
        try:
            await self._serve(task, reader, writer)
        except asyncio.CancelledError:
            pass  # retargeted or stopped: the client sees its connection close
        finally:
            self._conns.pop(task, None)
            writer.close()

    async def _connect(self) -> tuple[Endpoint, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The current primary, connected; None after ``wait_for_primary`` seconds without one.

        Nothing the client sent has gone anywhere yet, so waiting (and connecting to a
        different primary than the one of the moment it arrived) is safe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_for_primary
        held = False
        while True:
            changed = self._retargeted
            target = self._target
            if target is not None:
                try:
                    left = max(0.01, min(self._connect_timeout, deadline - loop.time()))
                    up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), left)
                    if target == self._target:
                        self.held += held
                        return target, up_reader, up_writer
                    up_writer.close()  # retargeted while connecting: go round again at once
                    continue
                except (OSError, TimeoutError) as exc:
                    log.info("node %s: %s proxy cannot reach %s: %s; holding the connection", self._node_id, self.service, target, exc)
                    if self._on_unreachable is not None:
                        self._on_unreachable(target)
            held = True
            left = deadline - loop.time()
            if left <= 0:
                self.held += 1
                log.warning("node %s: %s proxy closes a connection: no reachable primary in %.0f s", self._node_id, self.service, self._wait_for_primary)
                return None
            # Wake on a new target at once; retry the same one after a pause (it may restart).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, RETRY_AFTER if target is not None else left))

    async def _serve(self, task: asyncio.Task[None], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected = await self._connect()
        if connected is None:
            return
        target, up_reader, up_writer = connected
        self._conns[task] = target
        self.forwarded += 1
        try:
            pipes = [asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))]
            try:
                # Either side closing ends the connection.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
