"""ChromaDB: the ``chromadb`` package's server, supervised, its data under the node's data dir.

Layout of ``<data dir>/services/chromadb/``::

    password        the pool's ChromaDB password (0600, services.credentials): guards the snapshot
    data/           Chroma's persistence directory (SQLite and index segments)
    data.before-handover/   what data/ held before the last hand-over replaced it (kept, not merged)
    snapshot.tar    the last snapshot this copy served (overwritten by the next)

Two processes, one port. The supervised child (``python -m
services.runners.chroma``, the usual child protocol: announce, ``/health``)
starts Chroma's own server (``chroma run``, Rust, from the package) on a
private loopback port and forwards every request on the service's port to
it, so clients speak Chroma's HTTP API (``/api/v2/…``) on the service port or
through the gateway. The child adds one route of its own:

``GET /rmap2p/snapshot`` (``Authorization: Bearer <password>``) stops
Chroma (a clean shutdown flushes it), packs ``data/`` and answers the tar
archive. From then on this copy is *frozen*: it answers 503 to Chroma's
routes, so no write lands on a copy that has been handed over. The node that
takes over stops it once its own copy is healthy (make-before-break). A
freeze that nobody follows up (the new copy failed to start) lifts after
``FREEZE_SECONDS``: Chroma starts again on the same data.

Hand-over: ChromaDB has no replication, so a copy is never a replica.
``ChromaRunner.start`` first asks where another node's copy is serving
(``source``, from the view); if there is one it pulls that copy's snapshot
and restores it in place of its own data before Chroma starts; if there is
none it starts on whatever ``data/`` holds (a restart of the node keeps
everything Chroma had flushed).

What a crash can lose: if the node that serves ChromaDB dies (crash, power,
SIGKILL), nothing could copy its data; the next node starts on the data it
last held (an old hand-over's, or none), and every write since then is
missing until the dead node returns. When it does, its copy is not merged
back: if it takes the service over again, its old data is kept in
``data.before-handover/`` for the operator to recover by hand. A crash of Chroma's
server alone restarts it on the same data (SQLite's journal).

Chroma's server refuses nothing by itself: anyone who reaches the service
port can read and write. The port is bound on the node's service host like
every service; the password guards only the snapshot.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runner import RunnerError
from services.runners.process import ProcessRunner
from services.stateful import Endpoint
from services.supervisor import RestartPolicy

log = logging.getLogger(__name__)

SERVICE = "chromadb"
MODULE = "services.runners.chroma"
DATA_ENV = "RMAP2P_CHROMA_DATA"
"""The child's Chroma persistence directory."""
PASSWORD_FILE_ENV = "RMAP2P_CHROMA_PASSWORD_FILE"
"""The file holding the password a snapshot request must present."""
SNAPSHOT_PATH = "/rmap2p/snapshot"
FREEZE_SECONDS = 120.0
"""A copy that served a snapshot and was not stopped starts serving again after this long."""
HANDOVER_TIMEOUT = 60.0
"""How long a new copy keeps trying to pull the serving copy's snapshot before it gives up."""
SERVER_READY_TIMEOUT = 60.0
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization", "host", "content-length"})

_SERVER_MAIN = "import sys, chromadb_rust_bindings; chromadb_rust_bindings.cli(['chroma', 'run', '--path', sys.argv[1], '--host', '127.0.0.1', '--port', sys.argv[2]])"


def chroma_importable() -> bool:
    """Whether the ``chromadb`` package and its server bindings are installed (the ``storage`` extra)."""
    return importlib.util.find_spec("chromadb") is not None and importlib.util.find_spec("chromadb_rust_bindings") is not None


def server_argv(python: str, data: Path, port: int) -> list[str]:
    """The command that runs Chroma's server on ``127.0.0.1:port`` with ``data``. Pure."""
    return [python, "-c", _SERVER_MAIN, str(data), str(port)]


def snapshot_url(source: Endpoint) -> str:
    return f"http://{source}{SNAPSHOT_PATH}"


# ---------------------------------------------------------------- daemon side


class ChromaRunner(ProcessRunner):
    """One copy of ``chromadb``; takes the data of the copy serving elsewhere before it starts."""

    def __init__(
        self,
        service_dir: Path,
        host: str,
        port: int,
        node_id: str,
        password: str,
        source: Callable[[], Endpoint | None] = lambda: None,
        *,
        policy: RestartPolicy | None = None,
        on_failed: Callable[[str, str], None] | None = None,
        handover_timeout: float = HANDOVER_TIMEOUT,
    ) -> None:
        if not password:
            raise RunnerError(f"{SERVICE}: refusing to run without a password")
        self.dir = Path(service_dir)
        self._password = password
        self._source = source
        self._handover_timeout = handover_timeout
        env = {DATA_ENV: str((self.dir / "data").resolve()), PASSWORD_FILE_ENV: str((self.dir / "password").resolve())}
        super().__init__(SERVICE, MODULE, host, port, node_id, env, policy=policy, on_failed=on_failed)

    async def start(self) -> None:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        await self.take_over()
        await super().start()

    async def take_over(self) -> Endpoint | None:
        """Pull and restore the snapshot of the copy serving elsewhere, if one is; where it came from."""
        from services.runners import snapshot

        deadline = time.monotonic() + self._handover_timeout
        while True:
            source = self._source()
            if source is None:
                return None
            archive = self.dir / "incoming.tar"
            try:
                size = await snapshot.fetch(snapshot_url(source), self._password, archive, timeout=max(5.0, deadline - time.monotonic()))
                await asyncio.to_thread(snapshot.restore, archive, self.dir / "data", self.dir / "data.before-handover")
            except RunnerError as exc:
                if time.monotonic() > deadline:
                    raise RunnerError(f"{SERVICE}: the copy at {source} did not hand its data over: {exc}") from None
                log.warning("node %s: %s: hand-over from %s failed, retrying: %s", self._node_id, SERVICE, source, exc)
                await asyncio.sleep(2.0)
                continue
            finally:
                archive.unlink(missing_ok=True)
            log.info("node %s: %s took over the data of the copy at %s (%d bytes)", self._node_id, SERVICE, source, size)
            return source


# ---------------------------------------------------------------- child side


@dataclass
class ChromaServer:
    """Chroma's server process on a private port, stopped for a snapshot and started again."""

    data: Path
    password: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    frozen_since: float | None = None
    stopping: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: Any = None

    def spawn(self) -> None:
        from services.runners.native import guarded_argv

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        # Chroma logs on stdout; the supervisor reads our stdout only for the port line.
        self.proc = subprocess.Popen(guarded_argv(server_argv(sys.executable, self.data, self.port)), stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, env=env)
        deadline = time.monotonic() + SERVER_READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma's server exited with {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.terminate()
                raise RuntimeError(f"chroma's server not ready within {SERVER_READY_TIMEOUT:g} s")
            time.sleep(0.1)

    def terminate(self) -> None:
        """Stop Chroma cleanly (SIGTERM flushes it), SIGKILL after 30 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _engine() -> Any:
    from aiohttp import ClientError, ClientSession, ClientTimeout, web

    from services.runners import snapshot
    from services.runners.serve import CannotRun, Engine, Route, json_error

    class ChromaEngine(Engine[ChromaServer]):
        backend = "chroma"
        max_body = 256 * 1024 * 1024

        def preflight(self, env: Mapping[str, str]) -> None:
            if not chroma_importable():
                raise CannotRun("the chromadb package is not installed (pip install 'rmap2p[storage]')")
            if not env.get(DATA_ENV) or not env.get(PASSWORD_FILE_ENV):
                raise CannotRun(f"{DATA_ENV} and {PASSWORD_FILE_ENV} must be set (the daemon sets them)")

        def load(self, env: Mapping[str, str]) -> ChromaServer:
            try:
                password = Path(env[PASSWORD_FILE_ENV]).read_text().strip()
            except OSError as exc:
                raise CannotRun(f"cannot read the password file: {exc}") from None
            if not password:
                raise CannotRun("empty password file")
            data = Path(env[DATA_ENV])
            data.mkdir(parents=True, exist_ok=True)
            server = ChromaServer(data, password)
            server.spawn()
            return server

        async def started(self, loaded: ChromaServer) -> None:
            loaded.session = ClientSession(timeout=ClientTimeout(total=300), auto_decompress=False)
            asyncio.create_task(_watch(loaded))

        async def closing(self, loaded: ChromaServer) -> None:
            loaded.stopping = True
            await asyncio.to_thread(loaded.terminate)
            if loaded.session is not None:
                await loaded.session.close()

        def describe(self, loaded: ChromaServer) -> dict[str, Any]:
            return {"model": None, "state": "frozen" if loaded.frozen_since is not None else "serving", "data": str(loaded.data)}

        def routes(self) -> Sequence[Route[ChromaServer]]:
            return (Route("GET", SNAPSHOT_PATH, _snapshot), Route("*", "/{tail:.*}", _forward))

    async def _watch(server: ChromaServer) -> None:
        # Chroma dying under us is this child's failure: exit so the supervisor restarts both.
        while not server.stopping:
            await asyncio.sleep(0.5)
            proc = server.proc
            if proc is not None and proc.poll() is not None and not server.stopping and server.frozen_since is None:
                log.error("chroma's server exited with %s; exiting for the supervisor to restart", proc.returncode)
                sys.stderr.flush()
                os._exit(1)
            since = server.frozen_since
            if since is not None and time.monotonic() - since > FREEZE_SECONDS:
                async with server.lock:
                    if server.frozen_since is not None and not server.stopping:
                        log.warning("snapshot served %.0f s ago and this copy was not stopped: serving again", FREEZE_SECONDS)
                        try:
                            await asyncio.to_thread(server.spawn)
                        except RuntimeError as exc:
                            log.error("chroma's server did not start again (%s); exiting for the supervisor to restart", exc)
                            sys.stderr.flush()
                            os._exit(1)
                        server.frozen_since = None

    async def _snapshot(server: ChromaServer, request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), server.password.encode()):
            return json_error(401, "a snapshot needs the pool's chromadb password (Authorization: Bearer …)")
        async with server.lock:
            if server.frozen_since is None:
                await asyncio.to_thread(server.terminate)
                server.frozen_since = time.monotonic()
            archive = server.data.parent / "snapshot.tar"
            size = await asyncio.to_thread(snapshot.pack, server.data, archive)
        log.info("snapshot of %s served (%d bytes); this copy is frozen until it is stopped", server.data, size)
        return web.FileResponse(archive, headers={"Content-Type": "application/x-tar"})

    async def _forward(server: ChromaServer, request: web.Request) -> web.StreamResponse:
        if server.frozen_since is not None or server.proc is None:
            return json_error(503, "this chromadb copy has handed its data over to another node; retry through the gateway")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        url = f"http://127.0.0.1:{server.port}{request.rel_url}"
        try:
            async with server.session.request(request.method, url, headers=headers, data=body or None) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except (OSError, ClientError) as exc:
            return json_error(502, f"chroma's server did not answer: {exc}")

    return ChromaEngine()


if __name__ == "__main__":
    from services.runners.serve import main

    main(_engine(), description="rmap2p chromadb service child (Chroma's server behind the service port)")

