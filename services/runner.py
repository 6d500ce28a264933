"""Service runners: the interface, and the placeholder runner used until real ones exist.

A runner really starts something that listens, checks its health over the
network, and stops it. ``PlaceholderRunner`` is an aiohttp app on the
service's port that answers ``GET /health`` and echoes ``POST`` bodies, so
that allocation, reconciliation, health gossip and forwarding are all
exercised end to end with real sockets while the heavy runners (vLLM,
sentence-transformers, spaCy, Docker) are written. It never pretends to be
one of them: its health document says ``"runner": "placeholder"``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp
from aiohttp import web

from services.supervisor import RestartPolicy

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0
UNHEALTHY_AFTER = RestartPolicy().unready_after
"""Consecutive failed checks before an echo service that was healthy is reported unhealthy."""


class Runner(Protocol):
    service: str

    @property
    def port(self) -> int | None: ...

    @property
    def loaded_models(self) -> tuple[str, ...]: ...

    # Optional: ``load_progress -> int | None``, how far a loading model got in percent
    # (``services.load_progress``); the manager reads it with getattr, so runners that
    # cannot tell (in-daemon, echo, storage engines) need not define it.

    async def start(self) -> None: ...

    async def health(self) -> str:
        """One of ``starting``, ``healthy``, ``unhealthy``."""
        ...

    async def stop(self) -> None: ...


class RunnerError(RuntimeError):
    """A runner could not start (port taken, binary missing...)."""


class PlaceholderRunner:
    def __init__(self, service: str, host: str, port: int, node_id: str) -> None:
        self.service = service
        self._host = host
        self._want_port = port
        self._node_id = node_id
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._misses = 0
        self._ever_healthy = False

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return ()

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{path:.*}", self._echo)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._want_port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise RunnerError(f"{self.service}: cannot listen on {self._host}:{self._want_port}: {exc.strerror or exc}") from None
        self._runner = runner
        self._port = runner.addresses[0][1] if runner.addresses else self._want_port
        log.info("node %s: service %s listening on %s:%d", self._node_id, self.service, self._host, self._port)

    async def health(self) -> str:
        if self._port is None:
            return "starting"
        url = f"http://{_connect_host(self._host)}:{self._port}/health"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)) as session:
                async with session.get(url) as resp:
                    ok = resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        # As the supervisor does (RestartPolicy.unready_after): one check lost to a busy
        # event loop must not take a healthy service out of routing and allocation.
        self._misses = 0 if ok else self._misses + 1
        self._ever_healthy = self._ever_healthy or ok
        return "healthy" if ok or (self._ever_healthy and self._misses < UNHEALTHY_AFTER) else "unhealthy"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            log.info("node %s: service %s stopped", self._node_id, self.service)
        self._runner = None
        self._port = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self.service, "node_id": self._node_id, "runner": "placeholder"})

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "service": self.service,
                "node_id": self._node_id,
                "runner": "placeholder",
                "method": request.method,
                "path": "/" + request.match_info["path"],
                "bytes": len(body),
            }
        )


def _connect_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("0.0.0.0", "", "::") else bind_host
