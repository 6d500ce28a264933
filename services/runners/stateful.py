"""Registry of the stateful services' runners (storage engines with data and replicas).

``make_stateful_runner(service, data_dir, host, port, node_id, pool_secret)``
builds the runner of a storage service: its data under
``<data_dir>/services/<service>/``, its password from
``services.credentials`` (per pool, 0600, never a default). Whether this
machine can run one is ``services.storage_probe``.

| service | engine module | backend |
|---|---|---|
| redis | ``services.runners.redis_server`` | redis-server, replication with ``REPLICAOF``; in a container (``container_life``) where the binary is missing |
| postgres | ``services.runners.postgres`` | PostgreSQL's initdb/postgres, streaming replication; in containers where the programs are missing |
| chromadb | ``services.runners.chroma`` | Chroma's server; no replication: a hand-over copies a snapshot (a container where the package is missing: ``docker_runner``, no hand-over copy) |
| minio, neo4j | ``services.runners.docker_runner`` | official images through the Docker SDK; no replication |

``make_single_copy_runner`` builds the runner of a service in ``SINGLE_COPY``
(one copy at a time, no roles). For one in ``HANDED_OVER`` it pulls, before
it starts, the data of the copy that ``source()`` names (another node's,
serving now), if any; the Docker ones start on this node's own data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from services.credentials import service_password
from services.runner import Runner
from services.stateful import Endpoint, StatefulRunner
from services.storage_probe import storage_backend
from services.supervisor import RestartPolicy

STATEFUL_ENGINES: dict[str, str] = {
    "redis": "services.runners.redis_server",
    "postgres": "services.runners.postgres",
}


HANDED_OVER: dict[str, str] = {
    "chromadb": "services.runners.chroma",
}
"""Storage engines without replication: a planned move copies the data (snapshot) before the old copy stops."""
DOCKER_ENGINES: dict[str, str] = {
    "minio": "services.runners.docker_runner",
    "neo4j": "services.runners.docker_runner",
}
"""Storage engines that run only as containers (where a Docker engine answers)."""
SINGLE_COPY: tuple[str, ...] = (*HANDED_OVER, *DOCKER_ENGINES)
"""Storage services run as one copy with its data under the data dir (no primary/replica)."""


def is_stateful(service: str) -> bool:
    return service in STATEFUL_ENGINES


def service_dir(data_dir: Path, service: str) -> Path:
    """Where ``service`` keeps its data, password and config on this node."""
    return Path(data_dir) / "services" / service


def make_stateful_runner(
    service: str,
    data_dir: Path,
    host: str,
    port: int,
    node_id: str,
    pool_secret: bytes | None,
    *,
    policy: RestartPolicy | None = None,
    on_failed: Callable[[str, str], None] | None = None,
    synchronous: bool = False,
    env: Mapping[str, str] = os.environ,
) -> StatefulRunner:
    """The runner of ``service`` on ``host:port`` (0: a free port), data under ``data_dir``.

    ``synchronous``: PostgreSQL's primary commits only once a standby has the
    WAL (the operator's choice; Redis clients ask per write with ``WAIT``).
    """
    directory = service_dir(data_dir, service)
    password = service_password(directory, service, pool_secret)
    # The probe offered the service only where one backend can run it: the binaries, else an engine.
    if service == "redis":
        from services.runners.redis_server import RedisRunner, find_binary

        docker = None if storage_backend(service, native=find_binary() is not None, docker_engine=True) == "native" else env
        return RedisRunner(directory, host, port, node_id, password, policy=policy, on_failed=on_failed, docker_env=docker)
    if service == "postgres":
        from services.runners.postgres import PostgresRunner, find_bin_dir

        docker = None if storage_backend(service, native=find_bin_dir(env) is not None, docker_engine=True) == "native" else env
        return PostgresRunner(
            directory, host, port, node_id, password, policy=policy, on_failed=on_failed, synchronous=synchronous, docker_env=docker
        )  # fmt: skip
    raise KeyError(f"no stateful runner for {service}")


def make_single_copy_runner(
    service: str,
    data_dir: Path,
    host: str,
    port: int,
    node_id: str,
    pool_secret: bytes | None,
    source: Callable[[], Endpoint | None],
    *,
    policy: RestartPolicy | None = None,
    on_failed: Callable[[str, str], None] | None = None,
) -> Runner:
    """The runner of ``service`` (in ``SINGLE_COPY``) on ``host:port``, data under ``data_dir``.

    ``source()``: where another node's copy serves now (for ``HANDED_OVER``
    its data is taken over before this copy starts), or None (start on the
    local data).
    """
    directory = service_dir(data_dir, service)
    password = service_password(directory, service, pool_secret)
    if service == "chromadb":
        from services.runners.chroma import ChromaRunner, chroma_importable

        # The probe offered chromadb only where one backend can run it: the package, else an engine.
        if storage_backend(service, native=chroma_importable(), docker_engine=True) == "native":
            return ChromaRunner(directory, host, port, node_id, password, source, policy=policy, on_failed=on_failed)
        from services.runners.docker_runner import DockerRunner

        return DockerRunner(service, directory, host, port, node_id, password, on_failed=on_failed)
    if service in DOCKER_ENGINES:
        from services.runners.docker_runner import DockerRunner

        return DockerRunner(service, directory, host, port, node_id, password, on_failed=on_failed)
    raise KeyError(f"no single-copy runner for {service}")
