"""The shell every model service child runs in: bind, announce, load, serve, exit cleanly.

A child is ``python -m services.runners.<engine> --service S --host H --port P
--node-id N``. In order it

1. checks that it can run here (``Engine.preflight``: the package importable,
   the model present), else prints one line on stderr and exits with
   ``EXIT_CONFIG`` so the supervisor does not retry;
2. binds its port (a port in use is the same ``EXIT_CONFIG``) and prints
   ``RMAP2P-LISTENING <port>`` on stdout;
3. loads its model in a thread while ``GET /health`` answers 503
   ``{"status": "loading"}`` (with ``"progress"`` in percent once the
   engine reported some, also printed as ``RMAP2P-PROGRESS <n>`` lines:
   ``services.load_progress``) and every other route 503;
4. serves; ``/health`` answers 200 with the backend and model it serves;
5. exits on SIGTERM/SIGINT, and with ``--exit-on-stdin-eof`` (which the
   supervisor passes) when its stdin reaches EOF: the supervising daemon died,
   and no orphan may keep the port.

Handlers answer 4xx JSON for anything wrong with the client's input. A
request aiohttp cannot parse or that is too large gets aiohttp's own 4xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from services.capabilities import LocatedModel, locate_model, model_ref
from services.load_progress import Reporter
from services.supervisor import EXIT_CONFIG, LISTENING

log = logging.getLogger(__name__)

E = TypeVar("E")

Handler = Callable[[E, web.Request], Awaitable[web.StreamResponse]]


class CannotRun(Exception):
    """This machine cannot run the service (missing package or model, port taken): permanent."""


@dataclass(frozen=True, slots=True)
class ChildArgs:
    service: str
    host: str
    port: int
    node_id: str
    exit_on_stdin_eof: bool = False


@dataclass(frozen=True, slots=True)
class Route(Generic[E]):
    method: str
    path: str
    handler: Handler[E]


class Engine(Generic[E]):
    """What an engine module gives the shell. Subclass per engine; ``E`` is the loaded model object."""

    backend = "unknown"
    max_body = 1024 * 1024

    def preflight(self, env: Mapping[str, str]) -> None:
        """Fast checks before binding; raise ``CannotRun`` with a one-line reason."""

    def load(self, env: Mapping[str, str]) -> E:
        """Load the model (slow, runs in a thread); raise ``CannotRun`` if it cannot."""
        raise NotImplementedError

    def load_reporting(self, env: Mapping[str, str], report: Callable[[float], None]) -> E:
        """``load``, calling ``report(fraction)`` (0.0 to 1.0, from any thread) as it goes.

        Override this instead of ``load`` where the engine can tell how far it
        got; the default reports nothing, and the node then says only that the
        service is starting."""
        return self.load(env)

    async def started(self, loaded: E) -> None:
        """Called in the event loop once loaded (start batchers here)."""

    async def closing(self, loaded: E) -> None:
        """Called before exit."""

    def describe(self, loaded: E) -> dict[str, Any]:
        """Fields added to the 200 health document: at least ``model`` (None if the engine has none)."""
        return {"model": None}

    def routes(self) -> Sequence[Route[E]]:
        return ()


def required_model(service: str, env: Mapping[str, str], what: str, missing: str) -> LocatedModel:
    """The model configured for ``service`` as found here; else ``CannotRun("<what> '<ref>' <missing>")``."""
    ref = model_ref(service, env)
    assert ref is not None
    located = locate_model(service, ref, env)
    if located is None:
        raise CannotRun(f"{what} {ref!r} {missing}")
    return located


def parse_args(argv: Sequence[str] | None, description: str) -> ChildArgs:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--service", required=True, help="service name, for logs and /health")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to bind; 0 picks a free one and announces it")
    parser.add_argument("--node-id", default="", help="the node this child serves, for logs and /health")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (set by the supervising daemon)")
    ns = parser.parse_args(argv)
    return ChildArgs(service=ns.service, host=ns.host, port=ns.port, node_id=ns.node_id, exit_on_stdin_eof=ns.exit_on_stdin_eof)


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json_object(request: web.Request) -> dict[str, Any] | str:
    """The JSON object in the request body, or what is wrong with it (for a 400)."""
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return "body must be a JSON object"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    return body


def main(engine: Engine[Any], argv: Sequence[str] | None = None, description: str = "") -> None:
    args = parse_args(argv, description or f"rmap2p {engine.backend} service child")
    logging.basicConfig(
        level=os.environ.get("RMAP2P_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {args.service}: %(message)s",
    )
    try:
        code = asyncio.run(_serve(engine, args, os.environ))
    except CannotRun as exc:
        print(f"{args.service} cannot run on this machine: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    # Skip interpreter finalisation: with torch and transformers loaded it takes seconds
    # (measured 4-7 s), and a child has nothing left to save once its server is closed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _serve(engine: Engine[Any], args: ChildArgs, env: Mapping[str, str]) -> int:
    engine.preflight(env)
    holder: dict[str, Any] = {}
    progress = Reporter()

    async def health(request: web.Request) -> web.Response:
        base = {"service": args.service, "node_id": args.node_id, "backend": engine.backend, "runner": engine.backend, "pid": os.getpid()}
        if "loaded" not in holder:
            loading = {"progress": progress.percent} if progress.percent is not None else {}
            return web.json_response({**base, "status": "loading", **loading}, status=503)
        return web.json_response({**base, "status": "ok", **engine.describe(holder["loaded"])})

    def wrap(handler: Handler[Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if "loaded" not in holder:
                return json_error(503, f"{args.service} is loading its model")
            return await handler(holder["loaded"], request)

        return wrapped

    app = web.Application(client_max_size=engine.max_body)
    app.router.add_get("/health", health)
    for route in engine.routes():
        app.router.add_route(route.method, route.path, wrap(route.handler))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotRun(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = runner.addresses[0][1] if runner.addresses else args.port
    print(f"{LISTENING} {port}", flush=True)
    log.info("node %s: %s listening on %s:%d, loading model", args.node_id, args.service, args.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_wait_stdin_eof(stop)) if args.exit_on_stdin_eof else None
    code = 0
    load: asyncio.Task[Any] | None = None
    try:
        load = asyncio.create_task(asyncio.to_thread(engine.load_reporting, env, progress.report))
        done, _ = await asyncio.wait({load, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if load in done:
            loaded = load.result()  # CannotRun propagates: exit EXIT_CONFIG
            await engine.started(loaded)
            holder["loaded"] = loaded
            log.info("node %s: %s ready: %s", args.node_id, args.service, engine.describe(loaded))
            await stop.wait()
            await engine.closing(loaded)
    except CannotRun as exc:
        print(f"{args.service} cannot run on this machine: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    finally:
        if watch is not None:
            watch.cancel()
        await runner.cleanup()
    if load is not None and not load.done():
        # Told to stop while the model loads: a loading thread cannot be interrupted, and
        # asyncio.run would wait for it at exit; the process has nothing left to save.
        log.info("node %s: %s stopped while loading", args.node_id, args.service)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    log.info("node %s: %s stopped", args.node_id, args.service)
    return code


async def _wait_stdin_eof(stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin closes: the supervising daemon is gone."""
    loop = asyncio.get_running_loop()
    if sys.stdin is None:
        return
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return  # stdin is a file or /dev/null: nothing to watch
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    stop.set()
