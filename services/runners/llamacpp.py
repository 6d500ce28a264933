"""llm-inference on CPU: llama.cpp's OpenAI-compatible server (llama-cpp-python) with a GGUF model.

The child serves llama-cpp-python's own server application (the one
``python -m llama_cpp.server`` runs: ``/v1/chat/completions``,
``/v1/completions`` with SSE streams, ``/v1/models``...) in this process,
behind a front that adds what the supervisor needs and that server lacks:

- it binds the port itself and announces it (``RMAP2P-LISTENING <port>``)
  before the model loads, so a port clash is an immediate exit 78;
- ``GET /health`` answers 503 ``{"status": "loading", "progress": <percent>}``
  while the model loads (llama.cpp's own tensor-loading progress, also
  printed as ``RMAP2P-PROGRESS`` lines: ``services.load_progress``) and 200 ``{"status": "ok", "backend": "llama.cpp", "model": <alias>}`` once
  it serves; every other route answers 503 until then;
- it exits when stdin closes (the supervising daemon died).

The model is ``RMAP2P_GGUF_MODEL`` (or ``MODEL_NAME`` naming a ``.gguf``
file), its context ``MAX_MODEL_LEN`` (default 2048), threads
``RMAP2P_LLM_THREADS``; see ``services.engine_choice``. A file llama.cpp
cannot load is exit 78: retrying will not fix it.

A new request does not interrupt a stream in progress (llama-cpp-python's
default does): in a pool, two clients are two users. Requests are served one
at a time by the model, in arrival order.

Run as ``python -m services.runners.llamacpp --service llm-inference --port P``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from services.engine_choice import (
    LLAMA_CPP,
    MODULES,
    LlamaCppSettings,
    SettingsError,
    llama_cpp_settings,
    module_present,
)
from services.load_progress import Reporter
from services.runners.serve import CannotRun, ChildArgs, _wait_stdin_eof, parse_args
from services.supervisor import EXIT_CONFIG, LISTENING

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class Front:
    """ASGI app: ``/health`` here, everything else to llama.cpp's server once it is loaded."""

    def __init__(self, args: ChildArgs, settings: LlamaCppSettings) -> None:
        self.inner: Asgi | None = None
        self._base = {
            "service": args.service, "node_id": args.node_id, "backend": LLAMA_CPP,
            "runner": LLAMA_CPP, "pid": os.getpid(),
        }  # fmt: skip
        self._settings = settings
        self.progress = Reporter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; no websockets here
        if scope["path"] == "/health":
            if self.inner is None:
                loading = {"progress": self.progress.percent} if self.progress.percent is not None else {}
                await _json(send, 503, {**self._base, "status": "loading", **loading})
            else:
                s = self._settings
                await _json(send, 200, {**self._base, "status": "ok", "model": s.alias, "n_ctx": s.n_ctx})
            return
        if self.inner is None:
            await _json(send, 503, {"error": f"{self._base['service']} is loading its model"})
            return
        if scope["method"] == "POST" and scope["path"] in NAMED_PATHS:
            scope, receive = await _with_model(scope, receive, self._settings.alias)
        await self.inner(scope, receive, send)


NAMED_PATHS = ("/v1/chat/completions", "/v1/completions")
"""Requests whose ``model`` the front sets to the served model's alias.

llama-cpp-python answers with the request's ``model`` (whatever a client
wrote), or the file's path when there is none. This server has one model, so
the answer names it: that is what a node reports and what notes-coa quotes.
"""


async def _with_model(scope: Scope, receive: Receive, alias: str) -> tuple[Scope, Receive]:
    """The request with ``"model": alias`` in its JSON body (a body that is not a JSON object passes unchanged)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left; the server will see the disconnect on its next receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        body = json.dumps({**doc, "model": alias}).encode()
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server expects

    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return {**scope, "headers": headers}, replay


async def _json(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def reporting_progress(report: Callable[[float], None]) -> Iterator[None]:
    """While inside, every llama.cpp model loaded in this process calls ``report(fraction)`` as it loads.

    llama.cpp takes a progress callback in its model parameters, but
    llama-cpp-python's ``Llama`` builds those parameters itself from
    ``llama_model_default_params()`` and offers no way in; its server builds
    the ``Llama``. So for the one load this child does, that function returns
    defaults with the callback set. The callback must outlive the load: it is
    held here until the block ends.
    """
    import llama_cpp.llama_cpp as lib

    def on_progress(fraction: float, _user: object) -> bool:
        report(fraction)
        return True  # False would abort the load

    callback = lib.llama_progress_callback(on_progress)
    original = lib.llama_model_default_params

    def with_progress() -> Any:
        params = original()
        params.progress_callback = callback
        return params

    lib.llama_model_default_params = with_progress
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def build_app(settings: LlamaCppSettings, report: Callable[[float], None] | None = None) -> Asgi:
    """llama-cpp-python's server app with the model loaded (slow; raises ``CannotRun`` if it cannot load)."""
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = ModelSettings(
        model=settings.model_path,
        model_alias=settings.alias,
        n_ctx=settings.n_ctx,
        verbose=False,
        **({"n_threads": settings.n_threads, "n_threads_batch": settings.n_threads} if settings.n_threads else {}),
    )
    try:
        with reporting_progress(report) if report is not None else contextlib.nullcontext():
            app: Asgi = create_app(server_settings=ServerSettings(interrupt_requests=False), model_settings=[model])
    except (ValueError, RuntimeError, OSError) as exc:
        # llama-cpp-python raises ValueError("Failed to load model from file: ...") for a bad file.
        raise CannotRun(f"llama.cpp cannot load {settings.model_path}: {exc}") from None
    return app


def preflight(env: Mapping[str, str]) -> LlamaCppSettings:
    missing = [m for m in MODULES[LLAMA_CPP] if not module_present(m)]
    if missing:
        raise CannotRun(f"Python package(s) {', '.join(missing)} not installed (pip install 'llama-cpp-python[server]')")
    try:
        settings = llama_cpp_settings(env)
    except SettingsError as exc:
        raise CannotRun(str(exc)) from None
    if not os.path.isfile(settings.model_path):
        raise CannotRun(f"GGUF model {settings.model_path} not found")
    return settings


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CannotRun(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


async def serve(args: ChildArgs, env: Mapping[str, str]) -> int:
    import uvicorn

    settings = preflight(env)
    sock = bind(args.host, args.port)
    print(f"{LISTENING} {sock.getsockname()[1]}", flush=True)
    log.info("node %s: %s listening on %s:%d, loading %s", args.node_id, args.service, args.host, sock.getsockname()[1], settings.model_path)

    front = Front(args, settings)
    config = uvicorn.Config(front, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)  # SIGTERM and SIGINT: uvicorn stops serving, as it does by itself
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    watch = asyncio.create_task(_exit_on_eof(server)) if args.exit_on_stdin_eof else None
    load = asyncio.create_task(asyncio.to_thread(build_app, settings, front.progress.report))
    code = 0
    try:
        done, _ = await asyncio.wait({load, serving}, return_when=asyncio.FIRST_COMPLETED)
        if load in done:
            try:
                front.inner = load.result()
            except CannotRun as exc:
                print(f"{args.service} cannot run on this machine: {exc}", file=sys.stderr, flush=True)
                server.should_exit = True
                code = EXIT_CONFIG
            else:
                log.info("node %s: %s ready: llama.cpp, model %s", args.node_id, args.service, settings.alias)
        await serving
    finally:
        if watch is not None:
            watch.cancel()
    if not load.done():
        # Stopped while loading: the loading thread cannot be interrupted and would hold the exit.
        log.info("node %s: %s stopped while loading", args.node_id, args.service)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


async def _exit_on_eof(server: Any) -> None:
    stop = asyncio.Event()
    await _wait_stdin_eof(stop)
    if stop.is_set():
        server.should_exit = True


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv, "rmap2p llm-inference child: llama.cpp's OpenAI-compatible server")
    logging.basicConfig(
        level=os.environ.get("RMAP2P_LOG_LEVEL", "INFO").upper(),
        stream=sys.stderr,
        format=f"%(levelname)s {args.service}: %(message)s",
    )
    try:
        code = asyncio.run(serve(args, os.environ))
    except CannotRun as exc:
        print(f"{args.service} cannot run on this machine: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
