"""Whether this machine can run each storage service, and why: facts gathered once, a pure decision.

Same split as ``services.capabilities``: ``gather_storage_facts()`` looks at
the machine (which server binaries exist, whether a Docker engine answers,
whether we are root and the unprivileged user exists); ``can_run_storage``
decides from those facts alone and is table-tested. A node advertises a
storage service only when ``can_run_storage`` says yes, so the allocator
never assigns what cannot start; the reason is one line for the node's log
and ``rmap2p status``.

| service | native | else |
|---|---|---|
| redis | ``redis-server`` on the PATH | a Docker engine (``redis:7.4``, a container that dies with the daemon: ``services.runners.container_life``) |
| postgres | PostgreSQL's server programs (``postgres.find_bin_dir``); as root, the user ``RMAP2P_POSTGRES_USER`` (``postgres``) | a Docker engine (``postgres:15``, likewise; keep its major equal to the pool's other copies) |
| chromadb | the ``chromadb`` package and its server bindings (the ``storage`` extra) | a Docker engine (``chromadb/chroma``; no hand-over copy) |
| minio, neo4j | (none) | a Docker engine (``services.runners.docker_runner``) |

``storage_backend`` is the choice (native first, then a container) that
the probe and ``services.runners.stateful`` (``make_stateful_runner``,
``make_single_copy_runner``) follow. Redis and PostgreSQL are replicated
and their failover relies on the server dying with its node: natively the
parent-death signal does it; a container of theirs is tied to the daemon
by an attached stdin (``container_life``), so it stops when the daemon dies,
even by SIGKILL. Where the native programs exist but cannot be used (as
root without the PostgreSQL user, or without setpriv) the node says so and
does not fall back to a container: the operator's install is what is wrong.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.capabilities import service_names

STORAGE_SERVICES: tuple[str, ...] = ("chromadb", "redis", "postgres", "minio", "neo4j")
NATIVE_RUNNERS: frozenset[str] = frozenset({"redis", "postgres", "chromadb"})
"""Services whose native runner exists (services.runners.stateful)."""
DOCKER_RUNNERS: frozenset[str] = frozenset({"minio", "neo4j", "chromadb", "redis", "postgres"})
"""Services with a Docker path (services.runners.docker_runner; redis, postgres: services.runners.container_life)."""


@dataclass(frozen=True, slots=True)
class StorageFacts:
    redis_server: str | None
    """Path of redis-server, or None."""
    postgres_bin: str | None
    """Directory of PostgreSQL's server programs, or None."""
    is_root: bool
    postgres_user: str
    postgres_user_exists: bool
    setpriv: bool
    """util-linux setpriv is there (privilege drop, death signal)."""
    docker_engine: bool
    """A Docker engine answers on this machine."""
    chromadb: bool = False
    """The chromadb package and its server bindings are importable."""
    images: Mapping[str, str] = field(default_factory=dict)
    """Image overrides (``RMAP2P_<SERVICE>_IMAGE``) by service, for the reason line."""


Backend = str
"""``native`` (a local binary or package), ``docker`` (a container), or ``none``."""


def storage_backend(service: str, *, native: bool, docker_engine: bool) -> Backend:
    """How ``service`` runs on a machine: its native runner where it can, else a container where that is allowed. Pure."""
    if native and service in NATIVE_RUNNERS:
        return "native"
    if docker_engine and service in DOCKER_RUNNERS:
        return "docker"
    return "none"


def can_run_storage(service: str, facts: StorageFacts) -> tuple[bool, str]:
    """Whether this machine can run ``service``, and a one-line reason. Pure."""
    if service == "redis" and facts.redis_server:
        return True, f"redis: {facts.redis_server}"
    if service == "chromadb" and facts.chromadb:
        return True, "chromadb: the chromadb package (Chroma's server)"
    if service == "postgres" and facts.postgres_bin:
        if facts.is_root and not facts.postgres_user_exists:
            return False, f"postgres: the daemon runs as root and user {facts.postgres_user!r} does not exist to run PostgreSQL as (useradd --system {facts.postgres_user}, or set RMAP2P_POSTGRES_USER)"
        if facts.is_root and not facts.setpriv:
            return False, "postgres: the daemon runs as root and setpriv (util-linux) is missing to drop privileges"
        return True, f"postgres: {facts.postgres_bin}" + (f" as user {facts.postgres_user}" if facts.is_root else "")
    native = {
        "redis": "redis-server not found (apt-get install redis-server)",
        "postgres": "PostgreSQL's server programs not found (apt-get install postgresql)",
        "chromadb": "the chromadb package is not installed (pip install 'rmap2p[storage]')",
        "minio": "no native minio runner (it runs only as a container)",
        "neo4j": "no native neo4j runner (it runs only as a container)",
    }
    missing = native.get(service, f"no native {service} runner")
    if storage_backend(service, native=False, docker_engine=facts.docker_engine) == "docker":
        return True, f"{service}: Docker engine (image {_image(service, facts)}){_docker_note(service)}"
    return False, f"{service}: {missing} and no Docker engine"


def _image(service: str, facts: StorageFacts) -> str:
    from services.runners import container_life, docker_runner

    if service in container_life.IMAGES:
        return facts.images.get(service) or container_life.IMAGES[service]
    return facts.images.get(service) or docker_runner.IMAGES[service]


def _docker_note(service: str) -> str:
    return {
        "chromadb": "; no hand-over copy of its data when it moves",
        "redis": ", stopped with the daemon through its attached stdin",
        "postgres": ", stopped with the daemon through its attached stdin; its major must match the pool's other copies",
    }.get(service, "")


def gather_storage_facts(env: Mapping[str, str] = os.environ) -> StorageFacts:
    from services.runners.chroma import chroma_importable
    from services.runners.postgres import SUPERUSER, USER_ENV, find_bin_dir

    user = env.get(USER_ENV, SUPERUSER)
    try:
        pwd.getpwnam(user)
        user_exists = True
    except KeyError:
        user_exists = False
    bin_dir = find_bin_dir(env)
    return StorageFacts(
        redis_server=shutil.which("redis-server"),
        postgres_bin=str(bin_dir) if bin_dir else None,
        is_root=os.geteuid() == 0,
        postgres_user=user,
        postgres_user_exists=user_exists,
        setpriv=shutil.which("setpriv") is not None,
        docker_engine=docker_engine_present(env),
        chromadb=chroma_importable(),
        images=_image_overrides(env),
    )


def _image_overrides(env: Mapping[str, str]) -> dict[str, str]:
    from services.runners import container_life, docker_runner

    names = {**docker_runner.IMAGE_ENV, **container_life.IMAGE_ENV}
    return {service: env[var] for service, var in names.items() if env.get(var)}


def probe_storage(env: Mapping[str, str] = os.environ, services: Iterable[str] = STORAGE_SERVICES) -> dict[str, tuple[bool, str]]:
    """``can_run_storage`` for each of ``services`` on this machine, within ``RMAP2P_STORAGE_SERVICES``."""
    facts = gather_storage_facts(env)
    allowed = allowed_storage(env)
    return {s: can_run_storage(s, facts) if s in allowed else (False, f"{s}: not in {ALLOWED_ENV}") for s in services}


ALLOWED_ENV = "RMAP2P_STORAGE_SERVICES"
"""Comma-separated storage services this node may offer (default: all it can run)."""


def allowed_storage(env: Mapping[str, str]) -> frozenset[str]:
    """The storage services the operator lets this node offer (``RMAP2P_STORAGE_SERVICES``). Pure."""
    raw = env.get(ALLOWED_ENV, "").strip()
    if not raw:
        return frozenset(STORAGE_SERVICES)
    return service_names(raw)


def docker_engine_present(env: Mapping[str, str] = os.environ) -> bool:
    """Whether a Docker engine answers (the Docker SDK's ping), without failing when there is none."""
    host = env.get("DOCKER_HOST", "")
    if not host and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker  # the 'docker' extra
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure to reach the engine means "no engine"
        return False
