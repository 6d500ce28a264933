"""Storage engines as containers through the Docker SDK: MinIO, Neo4j and ChromaDB (official images).

Used where a Docker engine answers (``docker.from_env().ping()``, see
``services.storage_probe``); where none does, the node does not advertise
these services. What a container looks like is a pure function,
``container_spec``; ``DockerRunner`` runs it.

| service | image (override) | ports | data | credentials |
|---|---|---|---|---|
| minio | ``minio/minio`` (``RMAP2P_MINIO_IMAGE``) | S3 API 9000 on the service port | ``data/`` on ``/data`` | user ``rmap2p``, the pool's minio password |
| neo4j | ``neo4j:5-community`` (``RMAP2P_NEO4J_IMAGE``) | HTTP 7474 on the service port, Bolt 7687 (on 7687 where the service has its standard port, else a free one) | ``data/`` on ``/data``, ``logs/`` on ``/logs`` | user ``neo4j``, the pool's neo4j password |
| chromadb | ``chromadb/chroma:1.5.9`` (``RMAP2P_CHROMADB_IMAGE``) | HTTP 8000 on the service port | ``data/`` on ``/data`` (the native runner's layout) | none: Chroma has no password, as natively |

ChromaDB runs here only where the ``chromadb`` package is missing
(``services.storage_probe.storage_backend``: the native runner first). Its
container starts on this node's own data: the planned hand-over of the
native runner (a snapshot of the old copy, ``services.runners.chroma``) is
not done for a container. Redis and PostgreSQL are not run here: their
failover relies on the server dying with its node, and a container made
like these outlives a daemon killed by SIGKILL; theirs are made by
``services.runners.container_life`` (stdin tied to the daemon).

Each container's data is a bind mount of ``<data dir>/services/<name>/``, so
it survives a restart of the node and of the container. Passwords are
``services.credentials``' (per pool, 0600, never the image's default).

Supervision: the Docker engine restarts a container that exits
(``on-failure``, ``MAX_RESTARTS`` times); ``health()`` reports ``starting``
until the engine answers its HTTP readiness path, ``unhealthy`` while the container is not
running, and calls ``on_failed`` once the engine has given up, so the node
stops offering the service. A container outlives a daemon killed by
SIGKILL (the engine owns it); the next start on that node removes the
stale container of the same name before it creates a new one, so a
restarted node takes its port back with its data.

MinIO and Neo4j are not replicated here: a move starts the new node's
container on that node's own data dir (empty the first time). Keep them on
one storage node (``--specialization``) where their data matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.runner import RunnerError
from services.stateful import Endpoint
from services.supervisor import connect_host

log = logging.getLogger(__name__)

DOCKER_SERVICES: tuple[str, ...] = ("minio", "neo4j", "chromadb")
IMAGES: dict[str, str] = {"minio": "minio/minio", "neo4j": "neo4j:5-community", "chromadb": "chromadb/chroma:1.5.9"}
"""ChromaDB's tag follows the ``chromadb`` package the ``storage`` extra installs (same server, same data format)."""
IMAGE_ENV: dict[str, str] = {"minio": "RMAP2P_MINIO_IMAGE", "neo4j": "RMAP2P_NEO4J_IMAGE", "chromadb": "RMAP2P_CHROMADB_IMAGE"}
MINIO_USER = "rmap2p"
NEO4J_USER = "neo4j"
NEO4J_BOLT = 7687
NEO4J_HTTP = 7474
MINIO_API = 9000
CHROMA_HTTP = 8000
STANDARD_PORTS: dict[str, int] = {"minio": MINIO_API, "neo4j": NEO4J_HTTP, "chromadb": CHROMA_HTTP}
MAX_RESTARTS = 5
READY_TIMEOUT = 180.0
"""From ``containers.run`` to the engine's port answering (Neo4j takes tens of seconds on a slow disk)."""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """What ``containers.run`` gets for one copy. ``ports``: container port -> (host address, host port or None: any)."""

    name: str
    image: str
    ports: dict[str, tuple[str, int | None]]
    volumes: dict[str, dict[str, str]]
    environment: dict[str, str]
    command: list[str] | None
    labels: dict[str, str]
    ready_port: str
    """The container port whose host side answers ``ready_path`` when the copy is ready."""
    ready_path: str
    """An HTTP path answering 200 once the engine serves (a TCP connect is no proof: docker-proxy accepts at once)."""
    restart_policy: dict[str, Any] = field(default_factory=lambda: {"Name": "on-failure", "MaximumRetryCount": MAX_RESTARTS})

    def run_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``client.containers.run`` (detached). Pure."""
        return {
            "image": self.image,
            "name": self.name,
            "command": self.command,
            "ports": dict(self.ports),
            "volumes": dict(self.volumes),
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "restart_policy": dict(self.restart_policy),
            "detach": True,
        }


def container_name(node_id: str, service: str) -> str:
    """A Docker-legal container name for this node's copy of ``service``. Pure."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", node_id).strip("-.") or "node"
    return f"rmap2p-{safe}-{service}"


def container_spec(
    service: str,
    service_dir: Path,
    host: str,
    port: int,
    node_id: str,
    password: str,
    env: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The container of ``service`` on ``host:port`` (0: a free port), its data under ``service_dir``. Pure.

    Raises ``KeyError`` for a service without a Docker runner, ``ValueError``
    for an empty password (an official image's default would be used).
    """
    if service not in IMAGES:
        raise KeyError(f"no Docker runner for {service}")
    if not password:
        raise ValueError(f"{service}: refusing to run without a password")
    env = env or {}
    image = env.get(IMAGE_ENV[service]) or IMAGES[service]
    root = Path(service_dir).resolve()
    labels = {"rmap2p.node": node_id, "rmap2p.service": service}
    host_port = port or None
    name = container_name(node_id, service)
    if service == "minio":
        return ContainerSpec(
            name=name, image=image,
            ports={f"{MINIO_API}/tcp": (host, host_port)},
            volumes={str(root / "data"): {"bind": "/data", "mode": "rw"}},
            environment={"MINIO_ROOT_USER": MINIO_USER, "MINIO_ROOT_PASSWORD": password},
            command=["server", "/data"],
            labels=labels, ready_port=f"{MINIO_API}/tcp", ready_path="/minio/health/live",
        )  # fmt: skip
    if service == "chromadb":
        return ContainerSpec(
            name=name, image=image,
            ports={f"{CHROMA_HTTP}/tcp": (host, host_port)},
            volumes={str(root / "data"): {"bind": "/data", "mode": "rw"}},
            environment={"IS_PERSISTENT": "TRUE", "PERSIST_DIRECTORY": "/data", "ANONYMIZED_TELEMETRY": "FALSE"},
            command=None,
            labels=labels, ready_port=f"{CHROMA_HTTP}/tcp", ready_path="/api/v2/heartbeat",
        )  # fmt: skip
    bolt = NEO4J_BOLT if port == NEO4J_HTTP else None
    return ContainerSpec(
        name=name, image=image,
        ports={f"{NEO4J_HTTP}/tcp": (host, host_port), f"{NEO4J_BOLT}/tcp": (host, bolt)},
        volumes={str(root / "data"): {"bind": "/data", "mode": "rw"}, str(root / "logs"): {"bind": "/logs", "mode": "rw"}},
        environment={"NEO4J_AUTH": f"{NEO4J_USER}/{password}"},
        command=None,
        labels=labels, ready_port=f"{NEO4J_HTTP}/tcp", ready_path="/",
    )  # fmt: skip


def published_port(ports: Mapping[str, Any], container_port: str) -> int | None:
    """The host port Docker published ``container_port`` on, from ``container.ports``. Pure."""
    bindings = ports.get(container_port) or []
    for binding in bindings:
        try:
            return int(binding["HostPort"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _client() -> Any:
    try:
        import docker  # the 'storage' (or 'docker') extra
    except ImportError:
        raise RunnerError("the Docker SDK is not installed (pip install 'rmap2p[storage]')") from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types for "no engine"
        raise RunnerError(f"no Docker engine: {exc}") from None
    return client


class DockerRunner:
    """One copy of a storage service as a container; see the module docstring."""

    def __init__(
        self,
        service: str,
        service_dir: Path,
        host: str,
        port: int,
        node_id: str,
        password: str,
        *,
        on_failed: Callable[[str, str], None] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.service = service
        self.spec = container_spec(service, service_dir, host, port, node_id, password, env if env is not None else os.environ)
        self._dir = Path(service_dir)
        self._host = host
        self._node_id = node_id
        self._on_failed = on_failed
        self._ready_timeout = ready_timeout
        self._client: Any = None
        self._container: Any = None
        self._port: int | None = None
        self._ready = False
        self.failed: str | None = None

    @property
    def port(self) -> int | None:
        return self._port if self._container is not None else None

    @property
    def loaded_models(self) -> tuple[str, ...]:
        return ()

    @property
    def endpoint(self) -> Endpoint | None:
        return Endpoint(connect_host(self._host), self._port) if self.port else None

    async def start(self) -> None:
        for sub in self.spec.volumes:
            Path(sub).mkdir(parents=True, exist_ok=True)
        self._client = await asyncio.to_thread(_client)
        self._container = await asyncio.to_thread(self._run)
        ports = self._container.ports
        self._port = published_port(ports, self.spec.ready_port)
        if self._port is None:
            await self.stop()
            raise RunnerError(f"{self.service}: Docker published no port for {self.spec.ready_port}")
        deadline = time.monotonic() + self._ready_timeout
        while not await self._answers():
            state = await asyncio.to_thread(self._state)
            if state in ("exited", "dead") or time.monotonic() > deadline:
                logs = await asyncio.to_thread(lambda: self._container.logs(tail=10).decode(errors="replace"))
                await self.stop()
                raise RunnerError(f"{self.service}: container {self.spec.name} not ready ({state}): {logs.strip()[-500:]}")
            await asyncio.sleep(0.5)
        self._ready = True
        log.info("node %s: service %s started in container %s (%s) on %s:%d", self._node_id, self.service, self.spec.name, self.spec.image, self._host, self._port)

    async def health(self) -> str:
        if self._container is None:
            return "starting"
        state = await asyncio.to_thread(self._state)
        if state == "running" and await self._answers():
            self._ready = True
            return "healthy"
        if state in ("exited", "dead") and self.failed is None:
            self.failed = f"container {self.spec.name} {state} and Docker stopped restarting it"
            log.error("node %s: service %s failed for good: %s", self._node_id, self.service, self.failed)
            if self._on_failed is not None:
                self._on_failed(self.service, self.failed)
        return "unhealthy" if self._ready or state != "created" else "starting"

    async def stop(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        await asyncio.to_thread(_remove, container)
        log.info("node %s: service %s stopped (container %s removed; data kept in %s)", self._node_id, self.service, self.spec.name, self._dir)

    # ------------------------------------------------------------ internals

    def _run(self) -> Any:
        import docker.errors

        try:
            stale = self._client.containers.get(self.spec.name)
        except docker.errors.NotFound:
            stale = None
        if stale is not None:
            log.info("node %s: removing the stale container %s of an earlier run", self._node_id, self.spec.name)
            _remove(stale)
        try:
            self._client.images.get(self.spec.image)
        except docker.errors.ImageNotFound:
            log.info("node %s: pulling %s for %s", self._node_id, self.spec.image, self.service)
            self._client.images.pull(self.spec.image)
        try:
            container = self._client.containers.run(**self.spec.run_kwargs())
        except docker.errors.APIError as exc:
            raise RunnerError(f"{self.service}: Docker refused the container: {exc.explanation or exc}") from None
        container.reload()
        return container

    def _state(self) -> str:
        try:
            self._container.reload()
            return str(self._container.status)
        except Exception:  # noqa: BLE001 - removed behind our back, or the engine went away
            return "dead"

    async def _answers(self) -> bool:
        if self._port is None:
            return False
        return await asyncio.to_thread(_answers_200, Endpoint(connect_host(self._host), self._port), self.spec.ready_path)


def _answers_200(endpoint: Endpoint, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=3) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


def _remove(container: Any) -> None:
    # Either call fails when the container is already stopped or gone: both are the wanted end.
    with contextlib.suppress(Exception):
        container.stop(timeout=20)
    with contextlib.suppress(Exception):
        container.remove(force=True)
